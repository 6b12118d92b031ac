"""What only the SQLite writer has: its sure path, when the database refuses a plan.

The planner decides a batch without looking its event ids up (``optimistic``);
when the database refuses the batch's write the writer redoes it with every id
looked up and each caller's group in its own savepoint. The store contract
(``tests/contract/``) covers a retry that takes that path; this covers a row
no plan can foresee, as ``test_postgres_specific`` does for PostgreSQL.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sessionstream import projections
from sessionstream.core.errors import ValidationFailed
from sessionstream.core.vocabulary import EventType
from sessionstream.eventstore.model import (
    GENESIS_HASH,
    Doc,
    NewEvent,
    recompute_hash,
    record_event,
)
from sessionstream.eventstore.packing import pack_stream
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.sqlite.cache import DocCache
from sessionstream.eventstore.sqlite.packs import INSERT_PACK, pack_row
from sessionstream.eventstore.sqlite.schema import HEAD_AND_CLOCK

T = TypeVar("T")


async def test_a_request_the_database_refuses_fails_alone(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "s.db", projections.ALL)
    await store.open()
    try:
        await store.append("s-0", [NewEvent("x", {})])
        conn = sqlite3.connect(store.path)
        try:  # a refusal the writer cannot foresee: nothing it reads says so
            conn.execute(
                "CREATE TRIGGER refuse_rogue BEFORE INSERT ON events "
                "WHEN NEW.stream_id = 'rogue' BEGIN SELECT RAISE(ABORT, 'rogue'); END"
            )
            conn.commit()
        finally:
            conn.close()
        retried = NewEvent("x", {"n": 0})
        await store.append("s-3", [retried])
        outcomes = await asyncio.gather(
            store.append("s-1", [NewEvent("x", {})]),
            store.append("rogue", [NewEvent("x", {})]),
            store.append("s-2", [NewEvent("x", {})], expected_version=0),
            store.append("s-3", [retried]),  # a retry: a no-op on the sure path too
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], ValidationFailed), outcomes[1]
        ok = [o for o in outcomes if not isinstance(o, BaseException)]
        assert len(ok) == 3 and ok[2].duplicate
        assert sorted(e.position for o in ok[:2] for e in o.events) == [3, 4]
        assert await store.stream_version("rogue") == 0
        assert [e.stream_id for e in await store.read_all(2)] == ["s-1", "s-2"]
    finally:
        await store.close()


async def test_the_wal_is_checkpointed_off_the_append_path(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "wal.db", checkpoint_interval_s=0.02)
    await store.open()
    try:
        conn = store._writer._connection()
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # never in a commit
        for i in range(50):
            await store.append(
                f"s-{i % 5}", [NewEvent("thing.happened", {"i": i, "pad": "x" * 500})]
            )
        runs = store.checkpointer.runs
        for _ in range(500):  # the thread's next round copies what the appends wrote
            if store.checkpointer.runs >= runs + 2:
                break
            await asyncio.sleep(0.01)
        assert store.checkpointer.runs >= runs + 2
        other = sqlite3.connect(tmp_path / "wal.db")
        busy, frames, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        other.close()
        assert (busy, copied) == (0, frames)  # nothing left that the thread had not copied
    finally:
        await store.close()
    assert store.checkpointer.runs > 0


async def test_positions_packed_away_at_the_head_are_never_handed_out_again(
    tmp_path: Path,
) -> None:
    """The writer hands positions out above the rows' head and the packs' alike: were
    compaction ever to move the log's last rows into a pack, the next append still goes
    above them (``events.position`` has no ``AUTOINCREMENT`` counter to fall back on)."""
    store = SQLiteEventStore(tmp_path / "s.db", compact_runs=False)
    await store.open()
    try:
        await store.append("s-1", [NewEvent("x", {})])
        deltas = [NewEvent(EventType.MESSAGE_DELTA, {"text": str(n)}) for n in range(3)]
        await store.append("run-1", [NewEvent(EventType.RUN_CREATED, {}), *deltas])
        stored = await store.read_stream("run-1")
        assert [e.position for e in stored] == [2, 3, 4, 5]
        end = record_event(
            NewEvent(EventType.RUN_COMPLETED, {}),
            position=6,
            stream_id="run-1",
            version=5,
            prev_hash=stored[-1].hash,
            at=stored[-1].recorded_at,
        )
        (pack,) = pack_stream([*stored, end])
        conn = sqlite3.connect(store.path)
        try:  # the last three rows leave the table for a pack (a run's first stays a row)
            conn.execute(INSERT_PACK, pack_row(pack))
            conn.execute("DELETE FROM events WHERE position > 2")
            conn.commit()
        finally:
            conn.close()
        appended = await store.append("s-2", [NewEvent("x", {})])
        assert [e.position for e in appended.events] == [6]
        assert [e.position for e in await store.read_all(0)] == [1, 2, 3, 4, 5, 6]
    finally:
        await store.close()


async def test_the_writer_plans_on_what_another_connection_committed(tmp_path: Path) -> None:
    """The writer keeps the head and the stream heads its last batch left, and reads
    them again once anything else wrote: another store on the file, or a compaction
    on its own connection."""
    first = SQLiteEventStore(tmp_path / "s.db", compact_runs=False)
    second = SQLiteEventStore(tmp_path / "s.db", compact_runs=False)
    await first.open()
    await second.open()
    reads: list[str] = []
    conn = first._writer._connection()
    conn.set_trace_callback(lambda sql: reads.append(sql) if sql == HEAD_AND_CLOCK else None)
    try:
        await first.append("s", [NewEvent("x", {})], expected_version=0)
        await first.append("s", [NewEvent("x", {})], expected_version=1)
        assert len(reads) == 1  # the second append planned on what the first left
        await second.append("s", [NewEvent("x", {})], expected_version=2)
        await second.append("t", [NewEvent("x", {})], expected_version=0)
        appended = await first.append("s", [NewEvent("x", {})], expected_version=3)
        assert len(reads) == 2 and [e.position for e in appended.events] == [5]
        stream = await first.read_stream("s")
        assert [e.version for e in stream] == [1, 2, 3, 4]
        prev = GENESIS_HASH
        for event in stream:  # chained onto the head the other store wrote
            assert event.hash == recompute_hash(prev, event)
            prev = event.hash
        deltas = [NewEvent(EventType.MESSAGE_DELTA, {"text": str(n)}) for n in range(2)]
        await first.append("run-1", [NewEvent(EventType.RUN_CREATED, {}), *deltas])
        await first.append("run-1", [NewEvent(EventType.RUN_COMPLETED, {})])
        assert len(reads) == 2
        assert await first.compact(["run-1"]) > 0  # on its own connection
        following = await first.append("s", [NewEvent("x", {})], expected_version=4)
        assert len(reads) == 3 and [e.position for e in following.events] == [10]
    finally:
        conn.set_trace_callback(None)
        await second.close()
        await first.close()


async def test_a_read_after_a_commit_never_gets_the_cached_document_it_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscriber catching up reads the file, not the hub, so it can see a commit before
    the event loop has put the batch's documents in its read cache; the document its
    client asks for next must be the committed one, not the cached one it replaced."""
    store = SQLiteEventStore(tmp_path / "c.db", projections.ALL)
    await store.open()
    gate = asyncio.Event()
    try:
        sid = "0f8fad5b-d9cb-469f-a165-70867728950e"
        stream = f"session-{sid}"
        created = {"id": sid, "user_id": "u1", "campaign_id": "c1", "node_id": "n1"}
        claimed = {"run_id": "run_a", "kind": "turn", "task_status": "chat_processing"}
        await store.append(
            stream, [NewEvent("session.created", created), NewEvent("run.claimed", claimed)]
        )
        busy = await store.get_doc("session", sid)  # now in the read cache
        assert busy is not None and busy.body["row"]["task_status"] == "chat_processing"

        in_writer = store._in_writer

        async def late(fn: Callable[..., T], *args: Any) -> T:
            """The batch is committed, but the loop hears of it only once the gate opens."""
            out = await in_writer(fn, *args)
            if fn == store._writer.write_batch:
                await gate.wait()
            return out

        monkeypatch.setattr(store, "_in_writer", late)
        released = {"run_id": "run_a", "outcome": "run.failed"}
        appending = asyncio.ensure_future(
            store.append(stream, [NewEvent("run.released", released)], expected_version=2)
        )
        file = sqlite3.connect(store.path)
        try:
            for _ in range(500):  # what another reader of the file sees: the commit
                (version,) = file.execute(
                    "SELECT MAX(version) FROM events WHERE stream_id = ?", (stream,)
                ).fetchone()
                if version == 3:
                    break
                await asyncio.sleep(0.01)
            assert version == 3
        finally:
            file.close()
        assert not appending.done()
        now = await store.get_doc("session", sid)
        assert now is not None and now.body["row"]["task_status"] is None
        assert now.version == 3
        gate.set()
        await appending
        assert await store.get_doc("session", sid) == now  # and cached again
        assert ("session", sid) in store._reader.cache
    finally:
        gate.set()  # a failed assertion must not leave the writer waiting
        await store.close()


def test_a_document_read_while_a_batch_commits_is_not_cached() -> None:
    """The rules ``get_doc`` relies on, one at a time: a read that began before a batch
    started committing, or of a document the batch holds, may be of the version the
    commit replaced; the batch's own version is cached once the loop has it."""
    cache = DocCache(8)
    old, new = (Doc("session", "s1", {"v": v}, v, v) for v in (1, 2))
    epoch = cache.epoch
    cache.hold([("session", "s1")])  # the writer thread, before its COMMIT
    cache.put_read(old, epoch)  # read before the hold
    assert ("session", "s1") not in cache
    cache.put_read(old, cache.epoch)  # read after it, while the batch holds the document
    assert ("session", "s1") not in cache
    cache.put_all([new])  # the loop has the batch
    cache.release()
    assert cache[("session", "s1")] == new
    cache.put_read(old, cache.epoch)  # a slower reader never overwrites a newer write
    assert cache[("session", "s1")] == new
    cache.hold([("session", "s1")])
    assert ("session", "s1") not in cache  # held: read from the file until released
    cache.release()
    cache.put_read(new, cache.epoch)
    assert cache[("session", "s1")] == new
