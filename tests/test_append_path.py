"""The append path: one encoding per event, and projections asked only of their streams."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionstream.eventstore.model import (
    GENESIS_HASH,
    AppendRequest,
    NewEvent,
    RecordedEvent,
    canonical_json,
    recompute_hash,
    record_event,
    record_request,
    utc_now,
)

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
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


@given(value=JSON)
def test_canonical_json_spells_values_as_the_standard_encoder(value: Any) -> None:
    """The encoder built once spells every value as ``json.dumps`` with the same options."""
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(value) == expected


def test_canonical_json_refuses_a_cycle_as_a_value_error() -> None:
    """A cycle is bad data (``ValueError``, which the planner refuses alone), not a crash."""
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(ValueError):
        canonical_json({"a": looped})
    assert canonical_json({"b": [1], "a": None}) == '{"a":null,"b":[1]}'


def test_projector_folds_interleaved_streams_as_the_reference_fold() -> None:
    """Skipping projections of other stream families changes no document."""
    from sessionstream import projections
    from sessionstream.core.vocabulary import EventType
    from sessionstream.eventstore.model import RecordedEvent
    from sessionstream.eventstore.projector import BatchProjector, fold

    at = "2026-01-01T00:00:00.000Z"
    raw: list[tuple[str, str, dict[str, Any]]] = [
        (
            "session-s1",
            EventType.SESSION_CREATED,
            {"id": "s1", "user_id": "u", "campaign_id": "c", "node_id": "n"},
        ),
        ("user-u", EventType.TOKEN_ISSUED, {"token_hash": "h1"}),
        ("session-s1", EventType.SESSION_PATCHED, {"fields": {"title": "a"}}),
        ("session-s1", EventType.SESSION_PATCHED, {"fields": {"title": "b"}}),
        ("campaign-c", EventType.CAMPAIGN_CREATED, {"id": "c", "user_id": "u", "name": "n"}),
        ("user-u", EventType.TOKEN_REVOKED, {"token_hash": "h1"}),
        ("session-s1", EventType.SESSION_PATCHED, {"fields": {"title": "c"}}),
    ]
    versions: dict[str, int] = {}
    events = []
    for position, (stream, kind, data) in enumerate(raw, start=1):
        versions[stream] = versions.get(stream, 0) + 1
        events.append(
            RecordedEvent(
                position, stream, versions[stream], f"e{position}", kind, data, {}, None, at, "0"
            )
        )
    docs = BatchProjector(projections.ALL, lambda kind, key: None).project(events)
    for projection in projections.ALL:
        for key in {k for e in events if (k := projection.key(e)) is not None}:
            doc = docs.get((projection.kind, key))
            reference = fold(projection, [e for e in events if projection.key(e) == key])
            assert (doc.body if doc else None) == reference, (projection.kind, key)
    assert {kind for kind, _ in docs} == {"session", "token", "campaign"}


def test_no_snapshot_lookup_until_a_stream_could_be_due() -> None:
    """A young stream's append asks nothing about snapshots; at ``every`` one is taken."""
    from sessionstream import projections
    from sessionstream.core.vocabulary import EventType, session_stream
    from sessionstream.eventstore.batch import BatchPlanner
    from sessionstream.eventstore.model import AppendRequest

    asked: list[tuple[str, str]] = []

    def last_snapshot(stream_id: str, kind: str) -> int:
        asked.append((stream_id, kind))
        return 0

    def created() -> NewEvent:
        return NewEvent(
            EventType.SESSION_CREATED,
            {"id": "s", "user_id": "u", "campaign_id": "c", "node_id": "n"},
        )

    def patched(i: int) -> NewEvent:
        return NewEvent(EventType.SESSION_PATCHED, {"fields": {"title": str(i)}})

    planner = BatchPlanner(
        0,
        {},
        at="2026-01-01T00:00:00.000Z",
        projections=projections.ALL,
        snapshot_every=3,
        last_snapshot=last_snapshot,
    )
    young = planner.decide([AppendRequest(session_stream("s"), (created(), patched(1)), 0)])
    assert young.snapshots == () and asked == []
    planner.accept(young)
    due = planner.decide([AppendRequest(session_stream("s"), (patched(2),), 2)])
    assert [s.version for s in due.snapshots] == [3] and asked == [(session_stream("s"), "session")]


def test_a_request_of_mixed_types_chains_every_hash() -> None:
    """``record_request`` spells a type once while the events repeat it: each hash is
    still the canonical one of its own event, whatever type came before it."""
    types = ["a", "a", "b", "a", "b", "b", "c"]
    events = tuple(NewEvent(t, {"n": n}, {"m": t}) for n, t in enumerate(types))
    records = record_request(
        AppendRequest("s", events), head=3, version=1, prev_hash=GENESIS_HASH, at="T"
    )
    prev = GENESIS_HASH
    for record, t in zip(records, types, strict=True):
        assert record.type == t
        assert record.hash == recompute_hash(prev, record)
        prev = record.hash
    assert [r.position for r in records] == list(range(4, 11))


def test_a_recorded_event_is_built_and_frozen_as_a_dataclass() -> None:
    """Its hand-written ``__init__`` sets every field, positionally or by name."""
    fields = (1, "s", 2, "e", "t", {"d": 1}, {"m": 2}, "c", "T", "h")
    by_position = RecordedEvent(*fields, encoded=("{}", "{}"))
    by_name = RecordedEvent(
        position=1,
        stream_id="s",
        version=2,
        event_id="e",
        type="t",
        data={"d": 1},
        metadata={"m": 2},
        correlation_id="c",
        recorded_at="T",
        hash="h",
    )
    assert by_position == by_name and by_name.encoded is None
    assert by_position.encoded == ("{}", "{}")
    assert dataclasses.astuple(by_name)[:10] == fields
    assert dataclasses.replace(by_name, version=3).version == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        by_name.version = 4  # type: ignore[misc]


def test_utc_now_spells_each_millisecond_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second's spelling is kept between calls: it must change with the second."""
    ticks = iter([1_700_000_000_998_000_000, 1_700_000_000_999_999_999, 1_700_000_001_000_500_000])
    monkeypatch.setattr(time, "time_ns", lambda: next(ticks))
    assert [utc_now(), utc_now(), utc_now()] == [
        "2023-11-14T22:13:20.998Z",
        "2023-11-14T22:13:20.999Z",
        "2023-11-14T22:13:21.000Z",
    ]
