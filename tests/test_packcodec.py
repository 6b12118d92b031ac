"""Pack formats (``eventstore/packcodec.py``): every field back exactly, formats 1 and 2
(deltas alone) still read, and smaller than format 1 for a reply written a token at a
time."""

from __future__ import annotations

import itertools
import json
import uuid
import zlib
from collections.abc import Sequence
from typing import Any

from sessionstream.core.ids import Uuid7Sequence, uuid7
from sessionstream.eventstore import packcodec
from sessionstream.eventstore.compaction import compaction
from sessionstream.eventstore.model import GENESIS_HASH, NewEvent, RecordedEvent, record_event
from sessionstream.eventstore.packing import (
    FORMAT,
    _split_text,
    pack_stream,
    read_body,
    times_of,
    unpack,
)

RUN = "run-r1"
META: dict[str, Any] = {"actor": {"type": "run", "id": "r1"}, "session_id": "s1"}
START_MS = 1_796_000_000_000  # late 2026


def spelled(ms: int) -> str:
    return packcodec._spelled(ms)


def a_run(
    deltas: list[tuple[str, str, dict[str, Any]]],
    more: Sequence[tuple[str, str, str, dict[str, Any]]] = (),
) -> list[RecordedEvent]:
    """run.created, the deltas ``(event id, time, data)``, ``more`` events ``(type, event
    id, time, data)``, run.completed: as stored."""
    items: list[tuple[str, str, str, dict[str, Any]]] = [
        ("run.created", uuid7(START_MS), spelled(START_MS), {})
    ]
    items += [("message.delta", *d) for d in deltas]
    items += list(more)
    items.append(("run.completed", uuid7(START_MS + 99_000), spelled(START_MS + 99_000), {}))
    events: list[RecordedEvent] = []
    prev = GENESIS_HASH
    for version, (kind, event_id, at, data) in enumerate(items, 1):
        new = NewEvent(kind, data, META, correlation_id="session-s1", event_id=event_id)
        event = record_event(
            new, position=version * 3, stream_id=RUN, version=version, prev_hash=prev, at=at
        )
        events.append(RecordedEvent(*(getattr(event, f) for f in RecordedEvent.__slots__[:10])))
        prev = event.hash
    return events


def token_a_time(count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """A reply a token at a time, ~20 ms apart, ids made when the times were."""
    out = []
    for i in range(count):
        ms = START_MS + 5 + i * 20 + i % 3
        out.append((uuid7(ms), spelled(ms), {"text": f" tok{i % 7}"}))
    return out


def deltas_of(events: list[RecordedEvent]) -> list[RecordedEvent]:
    """What formats 1 and 2 packed of ``a_run``: its deltas."""
    return [e for e in events if e.type == "message.delta"]


def packed(events: list[RecordedEvent]) -> list[RecordedEvent]:
    """What a pack of ``a_run`` holds now: every event but its terminal one."""
    return events[:-1]


def back(events: list[RecordedEvent]) -> list[RecordedEvent]:
    packs = pack_stream(events)
    assert packs, "nothing packed"
    out = [e for p in packs for e in unpack(p.stream_id, p.correlation_id, p.body)]
    return sorted(out, key=lambda e: e.position)


def test_format_4_gives_back_every_field() -> None:
    events = a_run(token_a_time(50))
    assert back(events) == packed(events)
    body = read_body(pack_stream(events)[0].body)
    assert body["format"] == FORMAT == 4
    assert body["types"] == ["message.delta", "run.created"]
    # the run's id and its session's are the pack's own columns: referred to, not spelled
    assert body["metadata"] == {"actor": {"type": "run", "id": None}, "session_id": None}
    assert sorted(body["refs"]) == [[["actor", "id"], 0], [["session_id"], 1]]
    columns = body["segments"][0][4]
    assert columns[7] == "".join(e.data["text"] for e in deltas_of(events))
    assert columns[4][1:] == [len(e.data["text"]) for e in deltas_of(events)]
    assert type(columns[4][0]) is not int  # run.created's data is not a text alone


def as_format_3(body: bytes) -> bytes:
    """A format 4 pack as format 3 spelled it: texts in the data column, the metadata
    whole, deflated without a dictionary."""
    obj = read_body(body)
    for segment in obj["segments"]:
        segment[4] = _split_text(segment[4])[:7]  # without format 4's joined text column
    obj["format"], obj["metadata"] = 3, META
    del obj["refs"]
    return zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 6)


def test_format_3_packs_are_still_read() -> None:
    """Format 3 (a whole run, before the joined text, the references and the
    dictionary) as the first whole-run packs were written."""
    deltas = token_a_time(30)
    ms = START_MS + 2000
    events = a_run(deltas, [("message.completed", uuid7(ms), spelled(ms), {"message": "x"})])
    (pack,) = pack_stream(events)
    old = as_format_3(pack.body)
    assert json.loads(zlib.decompress(old))["format"] == 3
    assert unpack(RUN, "session-s1", old) == packed(events)
    assert times_of([(RUN, "session-s1", old)]) == [
        (e.position, e.recorded_at) for e in packed(events)
    ]


def test_a_reply_kept_beside_its_deltas_costs_a_few_bytes() -> None:
    """``message.completed`` repeats the text its deltas streamed: in one segment's
    joined text deflate spells it as a few back-references, where format 3's quoted
    tokens cost it a share of its length."""
    deltas = [  # words that do not repeat, as a real reply's mostly do not
        (event_id, at, {"text": f" w{(i * 7919) % 1009}"})
        for i, (event_id, at, _) in enumerate(token_a_time(80))
    ]
    reply = "".join(d[2]["text"] for d in deltas)
    ms = START_MS + 5000
    completed = ("message.completed", uuid7(ms), spelled(ms), {"message": {"content": reply}})
    (alone,) = pack_stream(a_run(deltas))
    (both,) = pack_stream(a_run(deltas, [completed]))
    assert len(both.body) - len(alone.body) < 40
    assert len(as_format_3(both.body)) - len(as_format_3(alone.body)) > 80


def test_what_format_2_cannot_shorten_is_kept_verbatim() -> None:
    """Ids that are not canonical UUIDs, times in another spelling or the same
    millisecond, data that is not text alone, an id made before its time."""
    ms = START_MS + 1000
    odd: list[tuple[str, str, dict[str, Any]]] = [
        ("not-a-uuid", spelled(ms), {"text": "a"}),
        (uuid7(ms).upper(), spelled(ms), {"text": "b"}),
        (uuid7(ms - 5), spelled(ms), {"text": "c", "extra": 1}),
        (uuid7(ms + 7), "2026-12-01T00:00:00Z", {"text": 5}),
        (uuid7(ms), "2026-12-01T00:00:00.5+00:00", {}),
        (uuid7(ms), spelled(ms), {"text": ""}),
        (uuid7(ms), spelled(ms), {"text": 'é✓ \\ "'}),
        (uuid7(ms + 1), spelled(ms + 1), {"note": "x"}),
    ]
    events = a_run(odd)
    assert back(events) == packed(events)
    rows = [(p.stream_id, p.correlation_id, p.body) for p in pack_stream(events)]
    assert times_of(rows) == [(e.position, e.recorded_at) for e in packed(events)]


def format_1(events: list[RecordedEvent]) -> bytes:
    """A pack as format 1 spelled it (one segment here): [step, id, time or "", data]."""
    deltas = deltas_of(events)
    entries, last_position, last_at = [], deltas[0].position, ""
    for e in deltas:
        at = "" if e.recorded_at == last_at else e.recorded_at
        entries.append([e.position - last_position, e.event_id, at, e.data])
        last_position, last_at = e.position, e.recorded_at
    segment = [events[0].hash, deltas[-1].hash, deltas[0].version, deltas[0].position, entries]
    body = {"format": 1, "type": "message.delta", "metadata": META, "segments": [segment]}
    return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 6)


def format_2(events: list[RecordedEvent]) -> bytes:
    """A pack as format 2 spelled it (one segment here): the deltas' five columns, one
    type and one metadata for them all."""
    deltas = deltas_of(events)
    entries, last_position = [], deltas[0].position
    for e in deltas:
        entries.append((e.position - last_position, e.event_id, e.recorded_at, e.data))
        last_position = e.position
    columns = packcodec.encode(entries)
    segment = [events[0].hash, deltas[-1].hash, deltas[0].version, deltas[0].position, columns]
    body = {"format": 2, "type": "message.delta", "metadata": META, "segments": [segment]}
    return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 6)


def test_format_2_packs_are_still_read() -> None:
    events = a_run(token_a_time(30))
    body = format_2(events)
    assert unpack(RUN, "session-s1", body) == deltas_of(events)
    assert times_of([(RUN, "session-s1", body)]) == [
        (e.position, e.recorded_at) for e in deltas_of(events)
    ]


def test_format_1_packs_are_still_read() -> None:
    events = a_run(token_a_time(30))
    body = format_1(events)
    assert unpack(RUN, "session-s1", body) == deltas_of(events)
    assert times_of([(RUN, "session-s1", body)]) == [
        (e.position, e.recorded_at) for e in deltas_of(events)
    ]


def test_format_4_is_smaller_than_format_1_for_a_reply_a_token_at_a_time() -> None:
    """What lets a delta per token cost no more stored bytes than a 30 ms window did:
    60 token deltas in format 4 take less than 40 coalesced ones in format 1, and less
    than in format 2."""
    per_token = a_run(token_a_time(60))
    windows = []
    for i in range(40):  # the same 60 tokens, 1.5 to a delta, 30 ms apart
        ms = START_MS + 5 + i * 30
        text = "".join(f" tok{(i * 3 // 2 + k) % 7}" for k in range(1 + i % 2))
        windows.append((uuid7(ms), spelled(ms), {"text": text}))
    (packed,) = pack_stream(per_token)
    assert len(packed.body) < len(format_1(a_run(windows)))
    assert len(packed.body) < 0.8 * len(format_1(per_token))
    assert len(packed.body) < len(format_2(per_token))


def test_a_runs_ids_are_uuid7s_whose_random_bits_count_up() -> None:
    one, other = Uuid7Sequence(), Uuid7Sequence()
    ids = [one.next(START_MS + i) for i in range(5)]
    parsed = [uuid.UUID(i) for i in ids]
    assert all(str(p) == i for p, i in zip(parsed, ids, strict=True))
    assert all(p.version == 7 and p.variant == uuid.RFC_4122 for p in parsed)
    assert [p.int >> 80 for p in parsed] == [START_MS + i for i in range(5)]
    low = [p.int & ((1 << 62) - 1) for p in parsed]
    steps = [b - a for a, b in itertools.pairwise(low)]
    assert steps == [1] * 4 or low[0] > (1 << 62) - 5  # or the one start in 2**60 that wraps
    assert len({*ids, *(other.next(START_MS + i) for i in range(5))}) == 10


def test_ids_that_count_up_pack_in_a_byte_or_two() -> None:
    sequence = Uuid7Sequence()
    counted, random_ids = [], []
    for i in range(60):
        ms = START_MS + 5 + i * 20
        counted.append((sequence.next(ms), spelled(ms), {"text": f" tok{i % 7}"}))
        random_ids.append((uuid7(ms), spelled(ms), {"text": f" tok{i % 7}"}))
    events = a_run(counted)
    (small,) = pack_stream(events)
    (large,) = pack_stream(a_run(random_ids))
    assert back(events) == packed(events)
    assert len(small.body) < len(large.body) - 60 * 6


def test_times_of_a_range_are_those_of_every_time_in_it() -> None:
    """``as_of=<time>`` asks for the few positions between two stored rows: the same
    (position, time) pairs as the whole pack's, cut to the range, in either format,
    spellings kept (a same-millisecond time, another spelling of one)."""
    ms = START_MS + 1000
    odd = [
        (uuid7(ms), spelled(ms), {"text": "a"}),
        (uuid7(ms), "2026-12-01T00:00:00.5+00:00", {"text": "b"}),
        (uuid7(ms + 3), spelled(ms + 3), {"text": "c"}),
    ]
    for deltas in (token_a_time(40), odd + token_a_time(5)):
        events = a_run(deltas)
        rows = [(p.stream_id, p.correlation_id, p.body) for p in pack_stream(events)]
        old = [(RUN, "session-s1", format_1(events))]
        every = [(e.position, e.recorded_at) for e in packed(events)]
        every_old = [(e.position, e.recorded_at) for e in deltas_of(events)]
        positions = [p for p, _ in every]
        for after, bound in itertools.product(
            (0, positions[1], positions[3], positions[-2]), (positions[2], positions[-1], 10**9)
        ):
            cut = [(p, at) for p, at in every if after < p <= bound]
            assert times_of(rows, after, bound) == cut, (after, bound)
            cut = [(p, at) for p, at in every_old if after < p <= bound]
            assert times_of(old, after, bound) == cut, (after, bound)


def test_a_session_packed_from_a_later_block_chains_onto_the_pack_before() -> None:
    """Compaction of a session's tail (``compaction.compaction`` with ``before``): its packs
    give back the events with their hashes, chained onto the anchor; a tail that does not
    start right after the anchor is left as it is."""
    events: list[RecordedEvent] = []
    prev = GENESIS_HASH
    for version in range(1, 9):
        new = NewEvent("message.appended", {"role": "user", "content": f"m{version}"}, {})
        event = record_event(
            new,
            position=version * 10,
            stream_id="session-s1",
            version=version,
            prev_hash=prev,
            at="2026-12-06T00:00:00.000Z",
        )
        events.append(event)
        prev = event.hash
    head, tail = events[:4], events[4:]
    anchor = (head[-1].version, head[-1].hash)
    packs, moved = compaction(tail, [], anchor)
    assert moved == tail[:-1]  # all but the session's last event
    unpacked = [e for p in packs for e in unpack(p.stream_id, p.correlation_id, p.body)]
    assert unpacked == tail[:-1]
    assert compaction(tail, [], (anchor[0] - 1, anchor[1])) == ([], [])
    assert compaction(tail[1:], [], anchor) == ([], [])  # a version missing between
