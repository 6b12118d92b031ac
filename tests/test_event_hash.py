"""The hash chain's spelling: sha256 over the previous hash and the canonical event."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

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


def test_new_event_ids_are_random_version_4_uuids() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text  # spelled exactly as str(uuid.uuid4()) spells it
    # every bit outside the version and variant fields varies
    fixed = ~((0xF << 76) | (0x3 << 62)) & (2**128 - 1)
    first, varying = uuid.UUID(ids[0]).int, 0
    for text in ids[1:]:
        varying |= first ^ uuid.UUID(text).int
    assert varying == fixed
