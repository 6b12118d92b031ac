"""The hash chain's spelling: sha256 over the previous hash and the canonical event."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sessionstream.core.ids import uuid7, uuid7_hex
from sessionstream.eventstore.model import canonical_json, event_hash, new_event_id

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    data=st.dictionaries(st.text(), json_values, max_size=5),
    metadata=st.dictionaries(st.text(), json_values, max_size=3),
    stream_id=st.text(min_size=1),
    version=st.integers(min_value=1, max_value=2**40),
    event_type=st.text(min_size=1),
)
def test_event_hash_is_sha256_of_the_canonical_event(
    data: dict[str, Any], metadata: dict[str, Any], stream_id: str, version: int, event_type: str
) -> None:
    prev = "0f" * 32
    at = "2026-11-23T04:00:00.000Z"
    body = canonical_json([stream_id, version, "e-1", event_type, data, metadata, at])
    expected = hashlib.sha256(prev.encode() + body.encode()).hexdigest()
    got = event_hash(
        prev,
        stream_id=stream_id,
        version=version,
        event_id="e-1",
        type=event_type,
        data=data,
        metadata=metadata,
        recorded_at=at,
    )
    assert got == expected


def test_a_known_event_keeps_its_hash() -> None:
    """Pinned: a change of spelling would break every stored chain and every export."""
    got = event_hash(
        "0" * 64,
        stream_id="session-1",
        version=1,
        event_id="00000000-0000-4000-8000-000000000001",
        type="session.created",
        data={"title": "Café", "b": [1, 2.5, None]},
        metadata={"actor": {"type": "user", "id": "u"}},
        recorded_at="2026-01-01T00:00:00.000Z",
    )
    body = (
        '["session-1",1,"00000000-0000-4000-8000-000000000001","session.created",'
        '{"b":[1,2.5,null],"title":"Café"},{"actor":{"id":"u","type":"user"}},'
        '"2026-01-01T00:00:00.000Z"]'
    )
    assert got == hashlib.sha256(("0" * 64 + body).encode()).hexdigest()


def test_new_event_ids_are_version_7_uuids_that_sort_by_time() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
        assert str(parsed) == text  # spelled exactly as str(uuid.UUID(...)) spells it
        assert before <= parsed.int >> 80 <= after  # the millisecond it was made
    # every bit below the timestamp outside the version and variant fields varies
    fixed = ((1 << 80) - 1) & ~((0xF << 76) | (0x3 << 62))
    first, varying = uuid.UUID(ids[0]).int, 0
    for text in ids[1:]:
        varying |= (first ^ uuid.UUID(text).int) & ((1 << 80) - 1)
    assert varying == fixed


def test_ids_made_in_a_later_millisecond_sort_after_earlier_ones() -> None:
    early = [uuid7(1_700_000_000_000) for _ in range(50)]
    late = [uuid7(1_700_000_000_001) for _ in range(50)]
    assert max(early) < min(late)
    assert uuid7_hex(1_700_000_000_000)[:12] == f"{1_700_000_000_000:012x}"
