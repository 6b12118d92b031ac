"""One encoding per event: the hash put together from the encoded texts is the canonical hash."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sessionstream.eventstore.model import (
    GENESIS_HASH,
    NewEvent,
    canonical_json,
    recompute_hash,
    record_event,
)

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
JSON: Any = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


@given(
    data=st.dictionaries(TEXT, JSON, max_size=5),
    metadata=st.dictionaries(TEXT, JSON, max_size=3),
    stream=TEXT.filter(lambda s: "\x00" not in s),
    kind=TEXT,
    version=st.integers(min_value=1, max_value=2**53),
)
def test_record_hash_is_the_canonical_hash(
    data: dict[str, Any], metadata: dict[str, Any], stream: str, kind: str, version: int
) -> None:
    new = NewEvent(kind or "t", data, metadata)
    record = record_event(
        new,
        position=7,
        stream_id=stream,
        version=version,
        prev_hash=GENESIS_HASH,
        at="2026-01-01T00:00:00.000Z",
    )
    assert record.hash == recompute_hash(GENESIS_HASH, record)
    assert record.encoded == (canonical_json(data), canonical_json(metadata))
    assert json.loads(record.encoded[0]) == data
