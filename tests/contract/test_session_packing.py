"""A session's stream packed at the end of each turn, on every backend: every event
but the session's last leaves the event rows, and nothing a reader, a subscriber, an
auditor or a retried request sees changes (``eventstore/packing.py``).

A session keeps a turn's events for good (the claim, both messages, the
revisions, the release), each a row with four index entries; packed, a turn
costs about a third of that (docs/explanation/scale.md). Unlike a run, a
session goes on after its packs are written, so each compaction packs its
packs again together with the rows appended since.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

from sessionstream import projections
from sessionstream.core.vocabulary import EventType
from sessionstream.eventstore import packcodec
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import NewEvent, RecordedEvent
from sessionstream.eventstore.packing import BLOCK_BITS, read_body, write_body
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.transfer import Scope, export
from sessionstream.eventstore.verify import verify_store
from tests.contract.conftest import StoreFactory, assert_proven, raw_rows, read_in_pages

SESSION = "session-s9"
USER: dict[str, Any] = {"actor": {"type": "user", "id": "u1"}, "request_id": "q"}
#: the id of the session's patch: its request retried after compaction must find it
PATCH_ID = "01900000-0000-7000-8000-0000000000f1"


def run_meta(n: int) -> dict[str, Any]:
    return {"actor": {"type": "run", "id": f"r{n}"}, "session_id": "s9"}


async def turn(store: EventStore, n: int, version: int) -> int:
    """One turn as the run manager writes it on the session's stream: the claim, the
    user's message and the reply, a revision, the release (other streams between)."""
    claim = {"run_id": f"r{n}", "kind": "turn", "task_status": "chat_processing"}
    version = (
        await store.append(SESSION, [NewEvent(EventType.RUN_CLAIMED, claim, USER)], version)
    ).version
    await store.append(f"other-{n}", [NewEvent("noise.made", {"n": n})])
    said = [
        NewEvent(EventType.MESSAGE_APPENDED, {"role": "user", "content": f"ask {n}"}, run_meta(n)),
        NewEvent(
            EventType.MESSAGE_APPENDED,
            {"role": "assistant", "content": f"Here is draft {n}. " * 12},
            run_meta(n),
        ),
    ]
    version = (await store.append(SESSION, said, version)).version
    await store.append(f"other-{n}", [NewEvent("noise.made", {"n": n, "again": True})])
    released = {"outcome": "run.completed", "run_id": f"r{n}"}
    return (
        await store.append(
            SESSION, [NewEvent(EventType.RUN_RELEASED, released, run_meta(n))], version
        )
    ).version


async def write_session(store: EventStore, turns: int) -> int:
    created = {"id": "s9", "user_id": "u1", "campaign_id": "c", "node_id": "n"}
    version = (
        await store.append(SESSION, [NewEvent(EventType.SESSION_CREATED, created, USER)])
    ).version
    for n in range(turns):
        version = await turn(store, n, version)
        if n == 0:
            patch = NewEvent(EventType.SESSION_PATCHED, {"fields": {"title": "t"}}, USER, PATCH_ID)
            version = (await store.append(SESSION, [patch], version)).version
    return version


async def session_rows(store: EventStore, backend: str) -> list[int]:
    """The versions of the session's events left as rows."""
    sql = f"SELECT version FROM events WHERE stream_id = '{SESSION}' ORDER BY version"
    return [r[0] for r in await raw_rows(store, backend, sql)]


async def everything(store: EventStore) -> list[RecordedEvent]:
    return await store.read_all(0, limit=10_000)


async def test_a_sessions_turns_are_packed_and_read_back_as_appended(
    store_factory: StoreFactory,
) -> None:
    unpacked = await store_factory(compact_runs=False)
    last = await write_session(unpacked, turns=3)
    before_stream = await unpacked.read_stream(SESSION)
    before_log = await everything(unpacked)
    doc = await unpacked.get_doc("session", "s9")
    backend = store_factory.backend
    assert await session_rows(unpacked, backend) == list(range(1, last + 1))
    store = await store_factory()
    assert await store.compact([SESSION]) == last - 1
    assert await store.compact(["other-0"]) == 0  # its reads never look in packs
    assert await session_rows(store, backend) == [last]  # the session's last event alone
    assert await store.read_stream(SESSION) == before_stream
    assert await everything(store) == before_log
    assert await read_in_pages(store, 3) == before_log
    keyed = await store.read_all(0, limit=10_000, keys=frozenset({SESSION}))
    assert keyed == [e for e in before_log if SESSION in e.keys]
    assert await store.read_stream(SESSION, 4, limit=3) == before_stream[4:7]
    middle = before_log[len(before_log) // 2].position
    assert await store.read_stream(SESSION, to_position=middle) == [
        e for e in before_stream if e.position <= middle
    ]
    for event in before_stream:  # resume by version, and as_of by time, land on them
        assert await store.position_of(SESSION, event.version) == event.position
        expected = max(e.position for e in before_log if e.recorded_at <= event.recorded_at)
        assert await store.position_at(event.recorded_at) == expected
    assert await store.get_doc("session", "s9") == doc
    await assert_proven(store, before_log)
    await store.rebuild()
    assert await store.get_doc("session", "s9") == doc
    # the next turn's release packs its events with the packs already written
    last = await turn(store, 3, last)
    await store.append("after", [NewEvent("noise.made", {})])  # the writer has compacted
    assert await session_rows(store, backend) == [last]
    whole = await store.read_stream(SESSION)
    assert whole[: len(before_stream)] == before_stream
    assert [e.version for e in whole] == list(range(1, last + 1))
    assert await store.compact([SESSION]) == 0  # nothing new: nothing written
    assert (await verify_store(store)).ok


async def test_a_request_retried_after_its_events_were_packed_is_answered_as_before(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    await write_session(store, turns=2)
    assert 3 not in await session_rows(store, store_factory.backend)
    head = await store.head_position()
    patch = NewEvent(EventType.SESSION_PATCHED, {"fields": {"title": "t"}}, USER, PATCH_ID)
    again = await store.append(SESSION, [patch], expected_version=5)  # as first sent
    (stored,) = [e for e in await store.read_stream(SESSION) if e.event_id == PATCH_ID]
    assert again.duplicate and again.events == (stored,)
    assert await store.head_position() == head  # nothing appended


def edit_first_message(body: dict[str, Any]) -> None:
    for segment in body["segments"]:
        for data in segment[4][4]:
            if isinstance(data, dict) and "content" in data:
                data["content"] = "edited"
                return
    raise AssertionError("no message packed")


async def test_verify_catches_an_edit_to_a_packed_session_event(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    await write_session(store, turns=2)
    assert (await verify_store(store)).ok
    if store_factory.backend == "sqlite":
        conn = sqlite3.connect(store.path)  # type: ignore[attr-defined]
        (pack_id, raw) = conn.execute(
            "SELECT id, body FROM packs WHERE stream_id = ? ORDER BY block LIMIT 1", (SESSION,)
        ).fetchone()
        body = read_body(raw)
        edit_first_message(body)
        with conn:
            conn.execute("UPDATE packs SET body = ? WHERE id = ?", (write_body(body), pack_id))
        conn.close()
    else:
        pool = store._reader.require_pool()  # type: ignore[attr-defined]
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT block, body FROM packs WHERE stream_id = $1 ORDER BY block LIMIT 1",
                SESSION,
            )
            body = read_body(row["body"])
            edit_first_message(body)
            await conn.execute(
                "UPDATE packs SET body = $1 WHERE stream_id = $2 AND block = $3",
                write_body(body),
                SESSION,
                row["block"],
            )
    report = await verify_store(store)
    assert not report.ok
    # the chain breaks at the edited event's segment, and the session's row no longer
    # matches a fold of what the log now says
    kinds = {(p.kind, p.stream_id or p.doc_key) for p in report.problems}
    assert kinds == {("hash", SESSION), ("row", "s9")}


async def test_export_and_import_of_a_store_with_packed_sessions(
    store_factory: StoreFactory, tmp_path: Path
) -> None:
    store = await store_factory()
    last = await write_session(store, turns=2)
    out = io.StringIO()
    await export(store, Scope("the whole log", None), out)
    events = [RecordedEvent.from_json(json.loads(line)) for line in out.getvalue().splitlines()]
    assert events == await everything(store)
    if store_factory.backend == "sqlite":
        target: EventStore = SQLiteEventStore(tmp_path / "copy.db", projections.ALL)
        await target.open()
    else:
        target = await store_factory(schema=store.schema + "_copy")  # type: ignore[attr-defined]
    try:
        await target.import_events(events)
        assert await everything(target) == events
        assert await session_rows(target, store_factory.backend) == [last]  # packed again
        assert (await verify_store(target)).ok
        assert await target.get_doc("session", "s9") == await store.get_doc("session", "s9")
    finally:
        await target.close()
        if store_factory.backend == "postgres":
            async with store._reader.require_pool().acquire() as conn:  # type: ignore[attr-defined]
                await conn.execute(f'DROP SCHEMA "{store.schema}_copy" CASCADE')  # type: ignore[attr-defined]


async def test_two_nodes_packing_one_session_at_once_lose_nothing(
    store_factory: StoreFactory,
) -> None:
    """Each node packs the sessions whose turns its own writes ended; two may pack one
    session at once. Whatever the order, every event is read back once, packed or not."""
    if not store_factory.multi_node:
        return  # one writer: compactions are steps of its own queue
    writer = await store_factory(compact_runs=False)
    nodes = [await store_factory(), await store_factory()]
    last = await write_session(writer, turns=1)
    for n in range(1, 4):
        last = await turn(writer, n, last)
        expected = await writer.read_stream(SESSION)
        moved = await asyncio.gather(*(node.compact([SESSION]) for node in nodes))
        assert 0 in moved and sum(moved) > 0  # one packed it, the other found it packed
        assert await session_rows(writer, store_factory.backend) == [last]
        for node in nodes:
            assert await node.read_stream(SESSION) == expected
    assert (await verify_store(writer)).ok


async def set_pack_body(store: EventStore, backend: str, block: int, body: bytes) -> None:
    if backend == "sqlite":
        conn = sqlite3.connect(store.path)  # type: ignore[attr-defined]
        with conn:
            conn.execute(
                "UPDATE packs SET body = ? WHERE stream_id = ? AND block = ?",
                (body, SESSION, block),
            )
        conn.close()
        return
    async with store._reader.require_pool().acquire() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            "UPDATE packs SET body = $1 WHERE stream_id = $2 AND block = $3", body, SESSION, block
        )


async def test_a_long_session_writes_again_only_its_last_blocks(
    store_factory: StoreFactory,
) -> None:
    """The packs of the blocks before a session's first row stay as they are: a session
    of many turns is not packed again whole at each turn's end, and what the later
    packs chain onto is the last event of the one before them."""
    store = await store_factory()
    backend = store_factory.backend
    last = await write_session(store, turns=1)
    filler = [NewEvent("noise.made", {"i": i}) for i in range(1 << BLOCK_BITS)]
    await store.append("filler", filler)  # the log moves past a block's edge
    last = await turn(store, 1, last)
    await store.append("after", [NewEvent("noise.made", {})])  # the writer has compacted
    packs_sql = f"SELECT block, body FROM packs WHERE stream_id = '{SESSION}' ORDER BY block"
    early = await raw_rows(store, backend, packs_sql)
    assert len(early) == 2  # the first turn's block, and the second's
    # the first pack spelled otherwise (still read as the same events): packed again,
    # it would be spelled as compaction spells it
    appended = await store.read_stream(SESSION)
    respelled = packcodec.deflate(json.dumps(read_body(early[0][1]), indent=1).encode())
    await set_pack_body(store, backend, early[0][0], respelled)
    early[0] = (early[0][0], respelled)
    assert await store.read_stream(SESSION) == appended
    for n in (2, 3):
        last = await turn(store, n, last)
    await store.append("after", [NewEvent("noise.made", {})], expected_version=1)
    later = await raw_rows(store, backend, packs_sql)
    assert bytes(later[0][1]) == bytes(early[0][1])  # not written again
    assert [b for b, _ in later] == [b for b, _ in early]
    assert bytes(later[1][1]) != bytes(early[1][1])  # the turns since joined its pack
    assert await session_rows(store, backend) == [last]
    events = await store.read_stream(SESSION)
    assert [e.version for e in events] == list(range(1, last + 1))
    report = await verify_store(store)
    assert report.ok, report.problems


def shape(events: list[RecordedEvent]) -> list[tuple[Any, ...]]:
    """What two stores written alike agree on (ids and times are each store's own)."""
    return [(e.position, e.stream_id, e.version, e.type, e.data) for e in events]


async def write_across_blocks(store: EventStore) -> None:
    """A session whose turns lie in four blocks, the log's filler between them."""
    last = await write_session(store, turns=1)
    for n in range(1, 7):
        filler = [NewEvent("noise.made", {"i": i}) for i in range((1 << BLOCK_BITS) // 2 + 7)]
        await store.append(f"filler-{n}", filler)
        last = await turn(store, n, last)
    await store.append("after", [NewEvent("noise.made", {})])  # the writer has compacted


async def test_bounded_reads_of_a_session_packed_across_blocks(
    store_factory: StoreFactory,
) -> None:
    """Reads bounded by a position, a version or a page open only the packs (and the
    segments) the bound lets in, and stop decoding past it: each read agrees with the
    same log left as rows, at every session event and the positions beside it, where
    a bound one off would miss or add an event at a pack's or a block's edge."""
    rows_only = await store_factory(compact_runs=False)
    await write_across_blocks(rows_only)
    store = await store_factory()
    await write_across_blocks(store)
    backend = store_factory.backend
    packs = await raw_rows(
        store, backend, f"SELECT block FROM packs WHERE stream_id = '{SESSION}' ORDER BY block"
    )
    assert len(packs) >= 4
    assert len(await session_rows(store, backend)) == 1
    reference = await rows_only.read_stream(SESSION)
    log = await rows_only.read_all(0, limit=100_000)
    assert shape(await store.read_all(0, limit=100_000)) == shape(log)
    edges = sorted({p for e in reference for p in (e.position - 1, e.position, e.position + 1)})
    for bound in edges:
        expected = [e for e in reference if e.position <= bound]
        assert shape(await store.read_stream(SESSION, to_position=bound)) == shape(expected)
        for after in (0, 3, len(reference) // 2, len(reference) - 2):
            got = await store.read_stream(SESSION, after, limit=4, to_position=bound)
            assert shape(got) == shape([e for e in expected if e.version > after][:4])
    for after in edges[::3]:  # pages in log order from either side of a session event
        for limit in (1, 7, 500):
            want = [e for e in log if e.position > after][:limit]
            assert shape(await store.read_all(after, limit=limit)) == shape(want)
            top = after + 3
            want = [e for e in log if after < e.position <= top][:limit]
            got = await store.read_all(after, limit=limit, to_position=top)
            assert shape(got) == shape(want)
    whole = await store.read_all(0, limit=100_000)
    for event in whole:  # as_of by time: the last position at or before each time
        if event.stream_id == SESSION or event.position % 97 == 0:
            expected_at = max(e.position for e in whole if e.recorded_at <= event.recorded_at)
            assert await store.position_at(event.recorded_at) == expected_at
    assert shape(await read_in_pages(store, 5)) == shape(log)
    report = await verify_store(store)
    assert report.ok, report.problems
