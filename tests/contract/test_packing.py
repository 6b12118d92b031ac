"""Packed runs on every backend: a finished run's events, but its terminal one, leave
the event rows, and nothing a reader, a subscriber, an auditor or an export sees changes.

``eventstore/packing.py`` has the design. Each test writes a run the way the
run task does (its own stream at an exact seq, events correlated with the
session), reads it before the run ends, ends it, and compares.
"""

from __future__ import annotations

import io
import json
import sqlite3
from typing import Any

import pytest

from sessionstream.core.ids import uuid7
from sessionstream.core.vocabulary import EventType
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import AppendRequest, NewEvent, RecordedEvent
from sessionstream.eventstore.packing import (
    BLOCK_BITS,
    pack_stream,
    read_body,
    unpack,
    write_body,
)
from sessionstream.eventstore.transfer import Scope, export, import_into
from sessionstream.eventstore.verify import verify_store
from tests.contract.conftest import StoreFactory, assert_proven, raw_rows, read_in_pages

RUN = "run-r1"
SESSION = "session-s1"
META: dict[str, Any] = {"actor": {"type": "run", "id": "r1"}, "session_id": "s1"}
#: the ids of the run's ending, one append as ``services/runlog.finish`` makes it
ENDING_IDS = ("01900000-0000-7000-8000-0000000000e1", "01900000-0000-7000-8000-0000000000e2")
CREATED_ID = "01900000-0000-7000-8000-0000000000c1"
#: the rows a compacted run keeps: one correlated otherwise, and its terminal one
KEPT = [EventType.MESSAGE_SNAPSHOT, EventType.RUN_COMPLETED]
#: the claim ``services/claims.py`` makes: its event on the session stream, with known ids
CLAIMED_ID = "01900000-0000-7000-8000-0000000000c0"


def run_event(type_: str, **data: Any) -> NewEvent:
    return NewEvent(type_, data, META, correlation_id=SESSION)


def ending(run: str = RUN) -> list[NewEvent]:
    """The run's last message and its terminal event, in one append (``RUN``'s with
    known ids)."""
    completed = run_event(EventType.MESSAGE_COMPLETED, text="the end")
    ids = ENDING_IDS if run == RUN else (uuid7(), uuid7())
    return [
        NewEvent(completed.type, completed.data, META, ids[0], SESSION),
        NewEvent(EventType.RUN_COMPLETED, {"output": "ok"}, META, ids[1], SESSION),
    ]


def claim(event_id: str) -> NewEvent:
    """``run.claimed`` on the session stream, as ``services/claims.py`` appends it."""
    data = {"run_id": "r1", "kind": "turn", "task_status": "chat_processing"}
    return NewEvent(EventType.RUN_CLAIMED, data, {"actor": {"type": "user", "id": "u1"}}, event_id)


async def end_run(store: EventStore, seq: int, run: str = RUN) -> None:
    await store.append(run, ending(run), seq)
    await store.append("after", [NewEvent("noise.made", {})])  # the writer has compacted


async def write_run(store: EventStore, *, end: bool = True, run: str = RUN) -> list[str]:
    """A run with two stretches of deltas, other streams' events between them, events of
    other types (one with metadata of its own, one correlated otherwise); its chunks."""
    chunks = [f"word{i} " for i in range(40)]
    created = run_event(
        EventType.RUN_CREATED, run_id="r1", kind="turn", session_id="s1", user_id="u1"
    )
    created_id = CREATED_ID if run == RUN else uuid7()
    created = NewEvent(created.type, created.data, META, created_id, SESSION)
    claimed = claim(CLAIMED_ID if run == RUN else uuid7())
    _, made = await store.transact(
        [AppendRequest(SESSION, (claimed,), None), AppendRequest(run, (created,), 0)]
    )
    seq = made.version
    seq = (await store.append(run, [run_event(EventType.RUN_STARTED)], seq)).version
    own = {**META, "note": "own"}
    updated = NewEvent(
        EventType.SKELETON_UPDATED, {"skeleton": {"hook": "h"}}, own, correlation_id=SESSION
    )
    seq = (await store.append(run, [updated], seq)).version
    for i, chunk in enumerate(chunks):
        if i == 30:
            completed = run_event(EventType.MESSAGE_COMPLETED, text="".join(chunks[:30]))
            seq = (await store.append(run, [completed], seq)).version
        if i == 20:
            progress = run_event(EventType.EXAMPLES_PROGRESS, done=1, total=2)
            seq = (await store.append(run, [progress], seq)).version
        if i == 25:  # correlated otherwise than the run's end: it stays a row
            odd = NewEvent(EventType.MESSAGE_SNAPSHOT, {"text": "so far"}, META)
            seq = (await store.append(run, [odd], seq)).version
        deltas = [run_event(EventType.MESSAGE_DELTA, text=chunk)]
        if i % 7 == 3:  # now and then two in one append, as a coalescer flushes them
            deltas.append(run_event(EventType.MESSAGE_DELTA, text=chunk.upper()))
        seq = (await store.append(run, deltas, seq)).version
        await store.append(f"other-{i % 3}", [NewEvent("noise.made", {"i": i})])
    if end:
        await end_run(store, seq, run)
    return chunks


async def run_rows(store: EventStore, backend: str) -> list[str]:
    """The types of the run's rows left in the events table itself, in version order."""
    sql = f"SELECT type FROM events WHERE stream_id = '{RUN}' ORDER BY version"
    return [r[0] for r in await raw_rows(store, backend, sql)]


async def stored_deltas(store: EventStore, backend: str) -> int:
    """Delta rows left in the events table itself."""
    sql = "SELECT COUNT(*) FROM events WHERE type = 'message.delta'"
    return int((await raw_rows(store, backend, sql))[0][0])


def set_text(columns: list[Any], i: int, text: str) -> None:
    """Event ``i``'s text, in format 4's columns: a text-alone data is its length in
    the data column and its characters in the segment's text column."""
    data = columns[4]
    start = sum(d for d in data[:i] if type(d) is int)
    columns[7] = columns[7][:start] + text + columns[7][start + data[i] :]
    data[i] = len(text)


def edit_third_delta(body: dict[str, Any]) -> None:
    """The third delta's text in a pack's body (format 4: ``eventstore/packcodec.py``)."""
    assert body["format"] == 4
    columns = body["segments"][0][4]
    delta = body["types"].index(EventType.MESSAGE_DELTA)
    third = [i for i, kind in enumerate(columns[5]) if kind == delta][2]
    set_text(columns, third, "edited ")


def edit_completed_text(body: dict[str, Any]) -> None:
    """A packed ``message.completed``'s text."""
    completed = body["types"].index(EventType.MESSAGE_COMPLETED)
    for segment in body["segments"]:
        columns = segment[4]
        for i, kind in enumerate(columns[5]):
            if kind == completed:
                set_text(columns, i, "edited ")
                return
    raise AssertionError("no message.completed packed")


def edit_started_type(body: dict[str, Any]) -> None:
    """``run.started`` made another type the pack holds."""
    columns = body["segments"][0][4]
    started = body["types"].index(EventType.RUN_STARTED)
    i = columns[5].index(started)
    columns[5][i] = body["types"].index(EventType.EXAMPLES_PROGRESS)


def edit_own_metadata(body: dict[str, Any]) -> None:
    """The metadata kept for the one event whose metadata is not the pack's usual."""
    ((_, metadata),) = body["segments"][0][4][6]
    metadata["note"] = "edited"


async def edit_a_pack(store: EventStore, backend: str, edit: Any = edit_third_delta) -> None:
    """An edit at rest: one packed event changed, the pack recompressed."""
    if backend == "sqlite":
        conn = sqlite3.connect(store.path)  # type: ignore[attr-defined]
        row = conn.execute("SELECT id, body FROM packs ORDER BY id LIMIT 1").fetchone()
        body = read_body(row[1])
        edit(body)
        with conn:
            conn.execute("UPDATE packs SET body = ? WHERE id = ?", (write_body(body), row[0]))
        conn.close()
        return
    async with store._reader.require_pool().acquire() as conn:  # type: ignore[attr-defined]
        row = await conn.fetchrow("SELECT stream_id, block, body FROM packs ORDER BY block LIMIT 1")
        body = read_body(row["body"])
        edit(body)
        await conn.execute(
            "UPDATE packs SET body = $1 WHERE stream_id = $2 AND block = $3",
            write_body(body),
            row["stream_id"],
            row["block"],
        )


def text_of(events: list[RecordedEvent]) -> list[tuple[int, str]]:
    return [(e.version, e.data["text"]) for e in events if e.type == EventType.MESSAGE_DELTA]


async def test_replay_after_compaction_equals_replay_before(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    chunks = await write_run(store, end=False)
    before_stream = await store.read_stream(RUN)
    before_log = await store.read_all(0, limit=10_000)
    assert await stored_deltas(store, store_factory.backend) == len(text_of(before_stream))
    assert len(await run_rows(store, store_factory.backend)) == len(before_stream)
    await end_run(store, before_stream[-1].version)
    assert await stored_deltas(store, store_factory.backend) == 0  # packed, not rows
    assert await run_rows(store, store_factory.backend) == KEPT  # every other event too
    after_stream = await store.read_stream(RUN)
    assert after_stream[:-2] == before_stream  # same events, same hashes, same times
    assert [e.type for e in after_stream[-2:]] == [
        EventType.MESSAGE_COMPLETED,
        EventType.RUN_COMPLETED,
    ]
    assert {e.type for e in after_stream} > {
        EventType.RUN_STARTED,
        EventType.SKELETON_UPDATED,
        EventType.EXAMPLES_PROGRESS,
    }
    texts = [t for _, t in text_of(after_stream)]
    assert "".join(t for t in texts if not t.isupper()) == "".join(chunks)
    after_log = await store.read_all(0, limit=10_000)
    assert after_log[: len(before_log)] == before_log
    # small pages, key filters and bounds merge the same way
    assert await read_in_pages(store, 7) == after_log
    session_view = await store.read_all(0, limit=10_000, keys=frozenset({SESSION}))
    assert session_view == [e for e in after_log if SESSION in e.keys]
    middle = before_log[len(before_log) // 2].position
    assert await store.read_all(0, limit=10_000, to_position=middle) == [
        e for e in before_log if e.position <= middle
    ]
    assert await store.read_stream(RUN, 10, limit=5) == before_stream[10:15]
    # run.created, packed: a run's first event (the trigger shape's payload) and an event
    # at its position (a proof's) are found as before
    assert await store.read_stream(RUN, 0, limit=1) == before_stream[:1]
    created = before_stream[0]
    assert await store.read_all(created.position - 1, limit=1) == [created]
    assert await store.read_stream(RUN, to_position=middle) == [
        e for e in before_stream if e.position <= middle
    ]
    by_stream: list[RecordedEvent] = []  # verify's order: stream by stream, small pages
    while page := await store.read_by_stream(
        (by_stream[-1].stream_id, by_stream[-1].version) if by_stream else ("", 0), limit=4
    ):
        by_stream.extend(page)
    assert by_stream == sorted(after_log, key=lambda e: (e.stream_id, e.version))
    cut = await store.read_by_stream(("", 0), limit=10_000, to_position=middle)
    assert cut == sorted(
        (e for e in before_log if e.position <= middle), key=lambda e: (e.stream_id, e.version)
    )
    for event in after_log[::5]:  # as_of by time lands on packed deltas too
        expected = max(e.position for e in after_log if e.recorded_at <= event.recorded_at)
        assert await store.position_at(event.recorded_at) == expected
    # the audit still holds: chains, positions, read models, and the Merkle tree's leaves
    await assert_proven(store, after_log)


async def test_verify_catches_an_edit_to_a_compacted_run(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await write_run(store)
    assert (await verify_store(store)).ok
    await edit_a_pack(store, store_factory.backend)
    report = await verify_store(store)
    assert not report.ok
    (problem,) = report.problems
    assert problem.kind == "hash" and problem.stream_id == RUN
    edited = next(e for e in await store.read_stream(RUN) if e.data.get("text") == "edited ")
    assert edited.type == EventType.MESSAGE_DELTA
    assert problem.version is not None and problem.version >= edited.version  # its segment


@pytest.mark.parametrize(
    "edit", [edit_completed_text, edit_started_type, edit_own_metadata], ids=lambda f: f.__name__
)
async def test_verify_catches_an_edit_to_any_packed_event(
    store_factory: StoreFactory, edit: Any
) -> None:
    """Not only a delta's text: another type's data, an event's type, its own metadata."""
    store = await store_factory()
    await write_run(store)
    before = await store.read_stream(RUN)
    await edit_a_pack(store, store_factory.backend, edit)
    after = await store.read_stream(RUN)
    said = [(e.type, e.data, e.metadata) for e in before]
    (changed,) = [
        e for e, was in zip(after, said, strict=True) if (e.type, e.data, e.metadata) != was
    ]
    report = await verify_store(store)
    assert not report.ok
    (problem,) = [p for p in report.problems if p.kind == "hash"]  # the run doc may differ
    assert problem.stream_id == RUN
    assert problem.version is not None and problem.version >= changed.version


async def test_resume_by_seq_across_a_compaction(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await write_run(store, end=False)
    before = await store.read_stream(RUN)
    positions = {e.version: e.position for e in before}
    await end_run(store, before[-1].version)
    assert await run_rows(store, store_factory.backend) == KEPT
    for seq in positions:  # packed events of every type, and the rows left
        assert await store.position_of(RUN, seq) == positions[seq]
    # a late subscriber resuming after seq 17, as the run channel does (server/tail.py)
    start = await store.position_of(RUN, 17)
    assert start is not None
    got: list[RecordedEvent] = []
    subscription = store.subscribe(start, keys=frozenset({RUN}))
    try:
        async for event in subscription:
            got.append(event)
            if event.type == EventType.RUN_COMPLETED:
                break
    finally:
        subscription.close()
    assert [e.version for e in got] == list(range(18, len(before) + 3))
    assert got[:-2] == before[17:]


async def test_export_and_import_of_a_compacted_store(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await write_run(store)
    out = io.StringIO()
    await export(store, Scope("the whole log", None), out)
    events = [RecordedEvent.from_json(json.loads(line)) for line in out.getvalue().splitlines()]
    assert events == await store.read_all(0, limit=10_000)
    assert len(text_of(events)) == 46
    if store_factory.backend == "sqlite":
        return  # one file per test: the import target is a PostgreSQL schema of its own
    target = await store_factory(schema=store.schema + "_copy")  # type: ignore[attr-defined]
    try:
        await target.import_events(events)
        assert await target.read_all(0, limit=10_000) == events
        assert (await verify_store(target)).ok
    finally:
        await target.close()
        async with store._reader.require_pool().acquire() as conn:  # type: ignore[attr-defined]
            await conn.execute(f'DROP SCHEMA "{store.schema}_copy" CASCADE')  # type: ignore[attr-defined]


async def test_keeping_raw_deltas_keeps_rows(store_factory: StoreFactory) -> None:
    store = await store_factory(compact_runs=False)
    await write_run(store)
    assert await stored_deltas(store, store_factory.backend) == 46
    stream = await store.read_stream(RUN)
    assert await store.compact([RUN]) == len(stream) - len(KEPT)  # on demand, the same
    assert await stored_deltas(store, store_factory.backend) == 0
    assert await run_rows(store, store_factory.backend) == KEPT
    assert await store.compact([RUN]) == 0
    assert await store.read_stream(RUN) == stream
    assert (await verify_store(store)).ok


def test_a_pack_splits_at_block_edges_and_gives_back_every_field() -> None:
    from sessionstream.eventstore.model import GENESIS_HASH, record_event

    events: list[RecordedEvent] = []
    prev, position = GENESIS_HASH, (1 << BLOCK_BITS) - 30
    kinds = ["run.created"] + ["message.delta"] * 50 + ["message.completed"]
    kinds += ["message.delta"] * 3 + ["run.completed"]
    for version, kind in enumerate(kinds, 1):
        position += 1 + version % 2
        event = record_event(
            run_event(kind, text=f"t{version} é✓ \\" if version == 7 else f"t{version}"),
            position=position,
            stream_id=RUN,
            version=version,
            prev_hash=prev,
            at=f"2026-01-01T00:00:{version // 9:02d}.000Z",
        )
        events.append(RecordedEvent(*(getattr(event, f) for f in RecordedEvent.__slots__[:10])))
        prev = event.hash
    packs = pack_stream(events)
    assert [p.block for p in packs] == [0, 1]
    back = [e for p in packs for e in unpack(p.stream_id, p.correlation_id, p.body)]
    assert sorted(back, key=lambda e: e.position) == events[:-1]  # its end stays
    assert pack_stream(events[:-1]) == []  # not ended: nothing to pack
    assert pack_stream(events[:3] + events[5:]) == []  # rows with gaps: packed before
    assert pack_stream([events[0], events[-1]]) == []  # its first kept by an older build
    assert pack_stream(events[-1:]) == []  # packed by this one


async def test_packs_written_before_their_times_were_kept_get_them_on_open(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    await write_run(store)
    log = await store.read_all(0, limit=10_000)
    if store_factory.backend == "sqlite":
        path = store.path  # type: ignore[attr-defined]
        await store.close()
        conn = sqlite3.connect(path)
        conn.executescript(
            "ALTER TABLE packs DROP COLUMN first_at; ALTER TABLE packs DROP COLUMN last_at; "
            "PRAGMA user_version=3;"
        )
        conn.close()
        store = await store_factory()
        conn = sqlite3.connect(path)
        times = conn.execute("SELECT first_at, last_at FROM packs").fetchall()
        conn.close()
        packed = [e for e in log if e.stream_id == RUN and e.type not in KEPT]
        assert times and times[0] == (packed[0].recorded_at, packed[-1].recorded_at)
    else:  # a pack without its times (migration 7 leaves them empty) is read whole
        async with store._reader.require_pool().acquire() as conn:  # type: ignore[attr-defined]
            await conn.execute("UPDATE packs SET first_at = NULL, last_at = NULL")
    for event in log[::3]:
        expected = max(e.position for e in log if e.recorded_at <= event.recorded_at)
        assert await store.position_at(event.recorded_at) == expected


async def test_a_page_of_contiguous_rows_asks_no_pack_but_a_page_past_packs_does(
    store_factory: StoreFactory,
) -> None:
    """A live tail's page (a node's pump reading other nodes' commits) is every
    position up to its last row, so it skips the pack statement; a page across
    a compacted run still gets the run's packed deltas."""
    store = await store_factory()
    chunks = await write_run(store)
    asked: list[tuple[int, int]] = []
    packs_between = store.packs.packs_between  # type: ignore[attr-defined]

    async def counted(after: int, bound: int, keys: frozenset[str] | None) -> Any:
        asked.append((after, bound))
        return await packs_between(after, bound, keys)

    store.packs.packs_between = counted  # type: ignore[attr-defined]
    head = await store.head_position()
    await store.append("later", [NewEvent("noise.made", {}), NewEvent("noise.made", {})])
    tail = await store.read_page(head, max_rows=1000, max_bytes=1 << 20)
    assert [e.position for e in tail] == [head + 1, head + 2]
    assert asked == []
    whole = await store.read_page(0, max_rows=1000, max_bytes=1 << 20)
    assert asked  # rows are missing between: the run's deltas were packed
    deltas = [e for e in whole if e.stream_id == RUN and e.type == EventType.MESSAGE_DELTA]
    assert len(deltas) == len(chunks) + sum(1 for i in range(len(chunks)) if i % 7 == 3)
    assert [e.position for e in whole] == sorted({e.position for e in whole})


async def test_a_retried_ending_or_claim_is_answered_as_a_duplicate_after_compaction(
    store_factory: StoreFactory,
) -> None:
    """The run's ending (its last message and its terminal event in one append) retried
    after its answer was lost: the terminal event is a row, the message is packed, and
    the retry gets both back, not a refusal. So does the claim of a retried ``POST
    .../turn`` (``services/claims.py``: ``run.claimed`` on the session stream and
    ``run.created`` on the run's at version 0, one transaction), though ``run.created``
    is packed and no row of the run is among its ids: the writers look its id up in
    the packs of the run the request appends to."""
    store = await store_factory()
    await write_run(store)
    assert await run_rows(store, store_factory.backend) == KEPT
    stream = await store.read_stream(RUN)
    (created,) = [e for e in stream if e.version == 1]
    assert created.type == EventType.RUN_CREATED and created.event_id == CREATED_ID
    again = await store.append(RUN, ending(), stream[-3].version)
    assert again.duplicate and list(again.events) == stream[-2:]
    # the claim retried as the service appends it: at the session's version as read now
    (claimed,) = [e for e in await store.read_stream(SESSION) if e.event_id == CLAIMED_ID]
    await store.append(SESSION, [NewEvent("session.patched", {"title": "t"})])  # moved on
    version = await store.stream_version(SESSION)
    retried = NewEvent(created.type, created.data, META, CREATED_ID, SESSION)
    on_session, on_run = await store.transact(
        [AppendRequest(SESSION, (claim(CLAIMED_ID),), version), AppendRequest(RUN, (retried,), 0)]
    )
    assert on_session.duplicate and list(on_session.events) == [claimed]
    assert on_run.duplicate and list(on_run.events) == [created]
    assert on_run.version == stream[-1].version
    # run.created alone, and an ending retried at no version, likewise
    repeated = await store.append(RUN, [retried], 0)
    assert repeated.duplicate and list(repeated.events) == [created]
    anyhow = await store.append(RUN, ending(), None)
    assert anyhow.duplicate and list(anyhow.events) == stream[-2:]
    assert await store.read_stream(RUN) == stream
    assert await store.stream_version(SESSION) == version


async def test_an_import_gives_back_the_space_of_the_rows_it_packed(
    store_factory: StoreFactory,
) -> None:
    """An import writes each event as a row, then packs the runs it ended: on PostgreSQL
    the heap and its indexes kept the packed rows' space (52 KB a turn at 10^5 against
    17 KB rewritten). ``import_into`` ends with the store's ``imported``, which rewrites
    ``events``: nothing is left for a ``VACUUM FULL`` to take back."""
    if store_factory.backend == "sqlite":
        return  # the re-layout closes SQLite's holes (tests/test_relayout.py)
    store = await store_factory()
    for n in range(4):  # several runs, so the rows packed away fill pages
        await write_run(store, run=f"run-r{n + 1}")
    events = await store.read_all(0, limit=100_000)
    target = await store_factory(schema=store.schema + "_copy")  # type: ignore[attr-defined]
    size = "SELECT pg_total_relation_size('events')"
    try:
        assert await import_into(target, events) == len(events)
        assert await target.read_all(0, limit=100_000) == events
        assert (await verify_store(target)).ok
        async with target._reader.require_pool().acquire() as conn:  # type: ignore[attr-defined]
            imported = await conn.fetchval(size)
            await conn.execute("VACUUM FULL events")
            assert imported <= await conn.fetchval(size)
    finally:
        await target.close()
        async with store._reader.require_pool().acquire() as conn:  # type: ignore[attr-defined]
            await conn.execute(f'DROP SCHEMA "{store.schema}_copy" CASCADE')  # type: ignore[attr-defined]


async def test_a_page_in_stream_order_unpacks_a_bounded_number_of_runs(
    store_factory: StoreFactory,
) -> None:
    """A packed run keeps two rows here (its terminal event, one correlated otherwise)
    for its fifty-odd events, so a page of rows in stream order spans a run every two
    rows. Unpacking every run it spans held ``limit`` times more events than asked
    (``verify`` and ``rebuild`` near 190 MB): a page holds at most ``limit`` events and
    one run more, and the pages still give back the whole log, each event once."""
    store = await store_factory()
    runs = [f"run-p{i:02d}" for i in range(12)]
    for run in runs:
        await write_run(store, run=run)
    longest = max([len(await store.read_stream(run)) for run in runs])
    limit = 16
    pages: list[list[RecordedEvent]] = []
    mark = ("", 0)
    while page := await store.read_by_stream(mark, limit=limit):
        pages.append(page)
        mark = (page[-1].stream_id, page[-1].version)
    assert max(len(p) for p in pages) <= limit + longest
    log = [e for p in pages for e in p]
    every = sorted(await store.read_all(0, limit=100_000), key=lambda e: (e.stream_id, e.version))
    assert log == every
    assert (await verify_store(store)).problems == ()
