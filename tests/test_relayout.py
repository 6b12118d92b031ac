"""Re-laying the SQLite events table behind compaction (``eventstore/sqlite/relayout.py``).

Compaction deletes a finished run's deltas from among other rows and leaves
their pages part empty; a re-layout rewrites a range of positions in place so
the rows that stay fill whole pages. These tests write many runs whose deltas
interleave with session events (as concurrent chats do), end them, and check
that the re-layout gives the pages back while no read, proof or export sees a
difference, and that it never passes the deltas of a run still streaming.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sessionstream.core.vocabulary import EventType
from sessionstream.eventstore.model import NewEvent, RecordedEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore, relayout
from sessionstream.eventstore.sqlite import store as sqlite_store
from sessionstream.eventstore.transfer import Scope, export
from sessionstream.eventstore.verify import verify_store
from tests.contract.conftest import assert_proven

RUNS = 12
DELTAS = 30
TEXT = "a sentence the session keeps, long enough to take room on a page. " * 5


def meta(run: int) -> dict[str, Any]:
    return {"actor": {"type": "run", "id": f"r{run}"}, "session_id": f"s{run}"}


def run_event(run: int, type_: str, **data: Any) -> NewEvent:
    return NewEvent(type_, data, meta(run), correlation_id=f"session-s{run}")


async def write_runs(store: SQLiteEventStore, runs: range) -> dict[int, int]:
    """Runs streaming at once, each delta beside a session event; their seqs."""
    seqs: dict[int, int] = {}
    for run in runs:
        created = run_event(run, EventType.RUN_CREATED, run_id=f"r{run}", kind="turn")
        seqs[run] = (await store.append(f"run-r{run}", [created], 0)).version
    for i in range(DELTAS):
        for run in runs:
            delta = run_event(run, EventType.MESSAGE_DELTA, text=f"w{i} ")
            seqs[run] = (await store.append(f"run-r{run}", [delta], seqs[run])).version
            note = NewEvent("note.kept", {"i": i, "text": TEXT}, {"actor": {"type": "system"}})
            await store.append(f"session-s{run}", [note])
    return seqs


async def end_runs(store: SQLiteEventStore, seqs: dict[int, int]) -> None:
    for run, seq in seqs.items():
        await store.append(f"run-r{run}", [run_event(run, EventType.RUN_COMPLETED)], seq)
    await store.compact([f"run-r{run}" for run in seqs])


def events_pages(path: str) -> tuple[int, float]:
    """The events table's pages and the share of their bytes unused (``dbstat``)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, unused, size = conn.execute(
            "SELECT COUNT(*), SUM(unused), SUM(pgsize) FROM dbstat WHERE name = 'events'"
        ).fetchone()
        return int(pages), unused / size
    finally:
        conn.close()


def cursor_of(path: str) -> int:
    """The re-layout cursor as another connection sees it (never the writer's own)."""
    conn = sqlite3.connect(path)
    try:
        return relayout.cursor(conn)
    finally:
        conn.close()


async def whole_log(store: SQLiteEventStore) -> list[RecordedEvent]:
    return await store.read_all(0, limit=100_000)


async def relay_all(store: SQLiteEventStore) -> int:
    relayout.STEP = 64  # from here on (the fixture undoes it)
    steps = 0
    while await store._relay_quietly(tail=False):
        steps += 1
    return steps


@pytest.fixture
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """No step while the runs are written (so the holes can be seen), small ones after."""
    monkeypatch.setattr(relayout, "STEP", 1 << 40)


async def test_relayout_gives_pages_back_and_changes_no_read(
    tmp_path: Path, small_steps: None
) -> None:
    store = SQLiteEventStore(tmp_path / "r.db")
    await store.open()
    try:
        await end_runs(store, await write_runs(store, range(RUNS)))
        before = await whole_log(store)
        streams = {s: await store.read_stream(s) for s in ("run-r3", "session-s3")}
        middle = before[len(before) // 2]
        at_time = await store.position_at(middle.recorded_at)
        out = io.StringIO()
        await export(store, Scope("the whole log", None), out)
        pages, unused = events_pages(store.path)
        assert unused > 0.25  # the holes the packed deltas left

        assert await relay_all(store) > 0
        after_pages, after_unused = events_pages(store.path)
        assert after_pages < pages * 0.8 and after_unused < unused / 2

        assert await whole_log(store) == before
        assert {s: await store.read_stream(s) for s in streams} == streams
        assert await store.position_at(middle.recorded_at) == at_time
        assert await store.position_of("run-r3", 7) == streams["run-r3"][6].position
        again = io.StringIO()
        await export(store, Scope("the whole log", None), again)
        assert again.getvalue() == out.getvalue()
        await assert_proven(store, before)
    finally:
        await store.close()


async def test_relayout_stops_short_of_a_run_still_streaming(
    tmp_path: Path, small_steps: None
) -> None:
    store = SQLiteEventStore(tmp_path / "live.db")
    await store.open()
    try:
        seqs = await write_runs(store, range(RUNS))
        live = {0: seqs.pop(0)}  # run 0 has deltas from the start and has not ended
        await end_runs(store, seqs)
        first_live = (await store.read_stream("run-r0"))[1].position
        await relay_all(store)
        assert cursor_of(store.path) < first_live
        await end_runs(store, live)
        assert await relay_all(store) > 0
        assert cursor_of(store.path) > first_live
        assert (await verify_store(store)).ok
    finally:
        await store.close()


async def test_the_writer_relays_by_itself_and_a_reopened_store_resumes(
    tmp_path: Path, small_steps: None
) -> None:
    path = tmp_path / "idle.db"
    store = SQLiteEventStore(path)
    await store.open()
    try:
        relayout.STEP = 64
        await end_runs(store, await write_runs(store, range(RUNS)))
        before = await whole_log(store)
        await store.append("after", [NewEvent("noise.made", {})])  # the writer goes round
        for _ in range(500):  # between batches, with nothing waiting
            if cursor_of(store.path) > 0:
                break
            await asyncio.sleep(0.01)
        assert cursor_of(store.path) > 0
    finally:
        await store.close()  # the tail too, up to the head
    conn = sqlite3.connect(path)
    try:
        head = conn.execute("SELECT MAX(position) FROM events").fetchone()[0]
        assert relayout.cursor(conn) == head
    finally:
        conn.close()
    store = SQLiteEventStore(path)
    await store.open()
    try:
        assert (await whole_log(store))[: len(before)] == before
        assert (await verify_store(store)).ok
    finally:
        await store.close()


async def test_a_store_keeping_raw_deltas_is_not_relaid(tmp_path: Path, small_steps: None) -> None:
    store = SQLiteEventStore(tmp_path / "raw.db", compact_runs=False)
    await store.open()
    try:
        seqs = await write_runs(store, range(3))
        for run, seq in seqs.items():
            await store.append(f"run-r{run}", [run_event(run, EventType.RUN_COMPLETED)], seq)
        await store.append("after", [NewEvent("noise.made", {})])
        assert cursor_of(store.path) == 0  # nothing was deleted
    finally:
        await store.close()


async def test_a_run_waiting_for_its_compaction_holds_the_cursor(
    tmp_path: Path, small_steps: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "CLOSING_STEPS", 0)
    store = SQLiteEventStore(tmp_path / "pending.db", compact_runs=False)
    await store.open()
    try:
        seqs = await write_runs(store, range(RUNS))
        for run, seq in seqs.items():
            await store.append(f"run-r{run}", [run_event(run, EventType.RUN_COMPLETED)], seq)
        await store.compact([f"run-r{run}" for run in range(1, RUNS)])
        first = (await store.read_stream("run-r0"))[1].position
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "pending.db", isolation_level=None)
    try:
        while relayout.step(conn, size=64, pending=frozenset({"run-r0"})):
            pass
        assert relayout.cursor(conn) < first  # its deltas are still to leave
        while relayout.step(conn, size=64):  # not queued: they stay rows, and are passed
            pass
        assert relayout.cursor(conn) > first
    finally:
        conn.close()


async def test_a_session_waiting_for_its_compaction_holds_the_cursor(
    tmp_path: Path, small_steps: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session's rows leave when a turn of it ends: one whose compaction is queued holds
    the cursor as a run's does; any other is passed (its next turn may never come)."""
    monkeypatch.setattr(sqlite_store, "CLOSING_STEPS", 0)
    path = tmp_path / "session.db"
    store = SQLiteEventStore(path, compact_runs=False)
    await store.open()
    try:
        seqs = await write_runs(store, range(RUNS))  # rows with holes before the session's
        for run, seq in seqs.items():
            await store.append(f"run-r{run}", [run_event(run, EventType.RUN_COMPLETED)], seq)
        await store.compact([f"run-r{run}" for run in range(RUNS)])
        first = (await store.append("session-s0", [NewEvent("noise.made", {})])).events[0]
        for i in range(200):
            await store.append("session-s0" if i % 50 == 0 else f"o-{i}", [NewEvent("n", {})])
    finally:
        await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        while relayout.step(conn, size=64, pending=frozenset({"session-s0"})):
            pass
        assert relayout.cursor(conn) < first.position  # its rows are still to leave
        while relayout.step(conn, size=64):
            pass
        assert relayout.cursor(conn) > first.position
    finally:
        conn.close()


async def test_appends_without_runs_are_not_relaid(tmp_path: Path) -> None:
    """Rows that never had holes are not rewritten, not even by a closing store."""
    store = SQLiteEventStore(tmp_path / "plain.db")
    await store.open()
    try:
        for i in range(3 * relayout.STEP):
            await store.append(f"s-{i % 7}", [NewEvent("noise.made", {"i": i})])
    finally:
        await store.close()
    assert cursor_of(str(tmp_path / "plain.db")) == 0


async def test_relayout_stops_short_of_any_event_a_live_run_will_pack(
    tmp_path: Path, small_steps: None
) -> None:
    """A run's every event but its terminal one leaves the table once it ends (whole runs
    are packed, ``run.created`` too), not only its deltas: a live run's ``run.created``
    holds the cursor, however many rows come before its ``run.started`` and its first
    delta (a run queued behind others, an engine slow to answer)."""
    store = SQLiteEventStore(tmp_path / "started.db")
    await store.open()
    try:
        seqs = await write_runs(store, range(1, RUNS))
        created = run_event(0, EventType.RUN_CREATED, run_id="r0", kind="turn")
        made = await store.append("run-r0", [created], 0)
        for i in range(400):  # a long wait for a worker, then for the engine's first token
            if i == 200:
                started = run_event(0, EventType.RUN_STARTED)
                seq = (await store.append("run-r0", [started], made.version)).version
            note = NewEvent("note.kept", {"i": i, "text": TEXT}, {"actor": {"type": "system"}})
            await store.append("session-s0", [note])
        delta = run_event(0, EventType.MESSAGE_DELTA, text="w ")
        seq = (await store.append("run-r0", [delta], seq)).version
        await end_runs(store, seqs)
        await relay_all(store)
        assert cursor_of(store.path) < made.events[0].position
        await end_runs(store, {0: seq})
        assert await relay_all(store) > 0
        assert cursor_of(store.path) > made.events[0].position
        assert (await verify_store(store)).ok
    finally:
        await store.close()
