"""Appends on a peer's own workloads: the ``eventsourcing`` library's SQLite recorder.

Two rows of ``bench/append``, each measured beside that recorder in the same
run (alternating, median of the rounds):

- ``bulk``: one append of 10,000 events to one stream;
- ``sequential``: 100 single-event appends, one after another, each awaited.

Ours hashes every event onto its stream's chain, runs every projection over
it and keeps the log gapless, all in the append's transaction; the recorder
inserts rows. Its events are handed over already encoded (``StoredEvent``
bytes), ours as Python objects the store encodes: the comparison leaves
the encoding to our side. Both files are WAL with ``synchronous=FULL``
(the recorder's by SQLite's compiled default, ours set by the writer): an
acknowledged append is on disk in both, so the comparison is at equal
durability. Each run reads both settings back from the two connections that
write (``durability``) and keeps them with the figures.

Beside the two, each row measures a third side, the *floor*: the same
statements our writer runs (``BEGIN IMMEDIATE``, the head and the stream's
head, one ``executemany`` into ``events``, ``COMMIT``) on raw ``sqlite3`` with
our schema and settings, the rows built before the clock starts. Its ratio to
the recorder is what our schema alone allows: no planning, hashing,
projecting or thread hops (docs/explanation/append-path.md).

And a fourth, the *bound*: the floor plus the one cost on each row that no
store with our promises can skip, so the best ratio such a store could reach.
On ``bulk`` that is encoding and hashing each event (``record_request``, the
rows built inside the clock; it also builds the records the append answers
with): the recorder is handed bytes. On
``sequential`` it is one round trip from the event loop to a thread and back
per append: a store that commits on the loop's own thread stops every other
request and subscriber for each fsync, which a streaming server cannot do.
Target: at least 1.0x the recorder on both rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from bench.common import median
from sessionstream import projections
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import (
    GENESIS_HASH,
    AppendRequest,
    NewEvent,
    record_request,
    utc_now,
)
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.sqlite.checkpointer import JOURNAL_SIZE_LIMIT
from sessionstream.eventstore.sqlite.schema import (
    HEAD_AND_CLOCK,
    INSERT_EVENT,
    SCHEMA,
    STREAM_HEAD,
    event_row,
)
from sessionstream.eventstore.sqlite.thread import WriterThread

BULK = 10_000
SEQUENTIAL = 100
TOPIC = "bench:Appended"
TYPE = "bench.appended"


class Spent(NamedTuple):
    """What a side's appends took: seconds on the clock, and the process's CPU seconds
    (every thread of it: ours plans on its writer thread), which the machine's load
    moves far less than the clock. On PostgreSQL the CPU leaves out the server's."""

    wall: float
    cpu: float


class _Timer:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def spent(self) -> Spent:
        return Spent(time.perf_counter() - self.wall, time.process_time() - self.cpu)


#: (events, scratch directory) -> what the appends took
Workload = Callable[[int, Path], Spent]


def payload(i: int) -> dict[str, Any]:
    return {"i": i, "pad": "x" * 100}


def _recorder(path: Path) -> Any:
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    recorder = SQLiteApplicationRecorder(SQLiteDatastore(str(path)))
    recorder.create_table()
    return recorder


def time_recorder(recorder: Any, count: int, bulk: bool) -> Spent:
    """What the recorder takes to insert ``count`` encoded events: in one call, or one a call."""
    from eventsourcing.persistence import StoredEvent

    originator = uuid.uuid4()
    events = [
        StoredEvent(originator, i + 1, TOPIC, json.dumps(payload(i)).encode()) for i in range(count)
    ]
    timer = _Timer()
    if bulk:
        recorder.insert_events(events)
    else:
        for event in events:
            recorder.insert_events([event])
    return timer.spent()


def peer_bulk(count: int, workdir: Path) -> Spent:
    return time_recorder(_recorder(workdir / "peer.db"), count, bulk=True)


def peer_sequential(count: int, workdir: Path) -> Spent:
    return time_recorder(_recorder(workdir / "peer.db"), count, bulk=False)


async def time_store(store: EventStore, count: int, bulk: bool) -> Spent:
    """What an open, empty store takes to append ``count`` events: in one call, or one a call."""
    events = [NewEvent(TYPE, payload(i), {"actor": {"id": "b"}}) for i in range(count)]
    timer = _Timer()
    if bulk:
        await store.append("bench-1", events, expected_version=0)
    else:
        for version, event in enumerate(events):
            await store.append("bench-1", [event], expected_version=version)
    spent = timer.spent()
    assert await store.head_position() == count
    return spent


async def _ours(count: int, path: Path, bulk: bool) -> Spent:
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    try:
        return await time_store(store, count, bulk)
    finally:
        await store.close()


def ours_bulk(count: int, workdir: Path) -> Spent:
    return asyncio.run(_ours(count, workdir / "store.db", bulk=True))


def ours_sequential(count: int, workdir: Path) -> Spent:
    return asyncio.run(_ours(count, workdir / "store.db", bulk=False))


def _rows(events: list[NewEvent]) -> list[tuple[Any, ...]]:
    """The ``events`` rows of one request appending ``events``: encoded, hashed, spelled."""
    request = AppendRequest("bench-1", tuple(events), 0)
    records = record_request(request, head=0, version=0, prev_hash=GENESIS_HASH, at=utc_now())
    return [event_row(r) for r in records]


def time_statements(path: Path, count: int, bulk: bool, *, encode: bool = False) -> Spent:
    """What our writer's statements alone take to append ``count`` events to one stream:
    in one transaction, or one a transaction; the rows (encoded, hashed) built first,
    or with ``encode`` inside the clock."""
    events = [NewEvent(TYPE, payload(i), {"actor": {"id": "b"}}) for i in range(count)]
    conn = _floor_connection(path)
    try:
        rows = [] if encode else _rows(events)
        timer = _Timer()
        if encode:
            rows = _rows(events)
        for batch in [rows] if bulk else [[row] for row in rows]:
            _transaction(conn, batch)
        return timer.spent()
    finally:
        conn.close()


def time_statements_hopping(path: Path, count: int) -> Spent:
    """The sequential floor with each transaction sent from an event loop to a thread
    and awaited: the one hop a store that keeps its loop serving pays per append."""
    events = [NewEvent(TYPE, payload(i), {"actor": {"id": "b"}}) for i in range(count)]
    rows = _rows(events)
    conn = _floor_connection(path)

    async def appends() -> Spent:
        thread = WriterThread("bench-floor")
        try:
            timer = _Timer()
            for row in rows:
                await thread.call(_transaction, conn, [row])
            return timer.spent()
        finally:
            thread.shutdown()

    try:
        return asyncio.run(appends())
    finally:
        conn.close()


def _floor_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "wal_autocheckpoint=0",
            f"journal_size_limit={JOURNAL_SIZE_LIMIT}",
        ):  # as ``SQLiteWriter.open`` sets them
            conn.execute(f"PRAGMA {pragma}")
        conn.executescript(SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _transaction(conn: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
    """One of our writer's transactions, statement for statement, without its Python."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(HEAD_AND_CLOCK).fetchone()
    conn.execute(STREAM_HEAD, ("bench-1",)).fetchall()
    conn.executemany(INSERT_EVENT, batch)
    conn.execute("COMMIT")


def floor_bulk(count: int, workdir: Path) -> Spent:
    return time_statements(workdir / "floor.db", count, bulk=True)


def floor_sequential(count: int, workdir: Path) -> Spent:
    return time_statements(workdir / "floor.db", count, bulk=False)


def bound_bulk(count: int, workdir: Path) -> Spent:
    return time_statements(workdir / "bound.db", count, bulk=True, encode=True)


def bound_sequential(count: int, workdir: Path) -> Spent:
    return time_statements_hopping(workdir / "bound.db", count)


def durability() -> dict[str, dict[str, Any]]:
    """``journal_mode`` and ``synchronous`` (0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA) as each side's
    writing connection has them: the comparison holds only at equal durability."""
    pragmas = ("journal_mode", "synchronous")
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        recorder = _recorder(Path(tmp) / "peer.db")
        with recorder.datastore.transaction(commit=True) as cursor:  # the writer connection
            peer: dict[str, Any] = {}
            for pragma in pragmas:
                cursor.execute(f"PRAGMA {pragma}")
                peer[pragma] = cursor.fetchone()[0]

        async def ours() -> dict[str, Any]:
            store = SQLiteEventStore(Path(tmp) / "store.db", projections.ALL)
            await store.open()
            try:
                conn = store._writer._connection()

                def read() -> dict[str, Any]:
                    return {p: conn.execute(f"PRAGMA {p}").fetchone()[0] for p in pragmas}

                return await store._in_writer(read)
            finally:
                await store.close()

        return {"subject": asyncio.run(ours()), "baseline": peer}


ROWS: dict[str, tuple[int, Workload, Workload]] = {
    "bulk": (BULK, ours_bulk, peer_bulk),
    "sequential": (SEQUENTIAL, ours_sequential, peer_sequential),
}
#: each row's sides beside ours and the recorder's: what our schema alone allows (floor),
#: and that plus the cost no store with our promises skips (bound)
EXTRAS: dict[str, dict[str, Workload]] = {
    "bulk": {"floor": floor_bulk, "bound": bound_bulk},
    "sequential": {"floor": floor_sequential, "bound": bound_sequential},
}
#: how the bench names each extra side
EXTRA_LABELS = {
    "floor": "our statements alone",
    "bound": "plus the cost we cannot skip (bulk: our encoding and hashing; sequential: a hop)",
}


def _in_scratch(workload: Workload) -> Callable[[int], Spent]:
    def once(count: int) -> Spent:
        with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
            return workload(count, Path(tmp))

    return once


def run(rounds: int) -> dict[str, Any]:
    settings = durability()
    print(f"  durability: ours {settings['subject']}, eventsourcing {settings['baseline']}")
    out = compare(
        {name: (n, _in_scratch(ours), _in_scratch(peer)) for name, (n, ours, peer) in ROWS.items()},
        rounds,
        {
            name: {side: _in_scratch(workload) for side, workload in sides.items()}
            for name, sides in EXTRAS.items()
        },
        cpu=True,
    )
    for row in out.values():
        row["durability"] = settings
    return out


def compare(
    rows: dict[str, tuple[int, Callable[[int], Spent], Callable[[int], Spent]]],
    rounds: int,
    extras: dict[str, dict[str, Callable[[int], Spent]]] | None = None,
    *,
    cpu: bool = False,
) -> dict[str, Any]:
    """Each row: our events/s and the recorder's, the order of the sides rotating.

    A row is (events, ours, the recorder's), each side taking the event count
    and answering what its appends took; ``extras`` adds sides to a row by
    name (``floor``: ``time_statements``; ``bound``), each kept as
    ``<name>_events_per_s`` and ``<name>_ratio``. With ``cpu``, also the
    events per CPU second of each side and their ratio (``cpu_ratio``): the
    steadier figure on a loaded machine, where the clock's ratio swings.
    """
    out: dict[str, Any] = {}
    load_start = [round(v, 2) for v in os.getloadavg()]
    for name, (count, ours, peer) in rows.items():
        more = (extras or {}).get(name, {})
        sides = [("subject", ours), ("baseline", peer), *more.items()]
        samples: dict[str, list[float]] = {side: [] for side, _ in sides}
        per_cpu: dict[str, list[float]] = {side: [] for side, _ in sides}
        for round_no in range(max(rounds, 3)):
            shift = round_no % len(sides)
            for side, workload in sides[shift:] + sides[:shift]:
                spent = workload(count)
                samples[side].append(count / spent.wall)
                per_cpu[side].append(count / max(spent.cpu, 1e-9))
        ours_rate, peer_rate = median(samples["subject"]), median(samples["baseline"])
        out[name] = {
            "events": count,
            "subject_events_per_s": round(ours_rate),
            "baseline_events_per_s": round(peer_rate),
            "ratio": round(ours_rate / peer_rate, 3),
            "target": "ratio >= 1.0",
            "met": ours_rate >= peer_rate,
            "samples": {side: [round(v) for v in values] for side, values in samples.items()},
            "load_average": {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]},
        }
        line = (
            f"  peer {name} ({count:,} events): ours {ours_rate:,.0f} ev/s, "
            f"eventsourcing {peer_rate:,.0f} ev/s, {ours_rate / peer_rate:.2f}x"
        )
        if cpu:
            ours_cpu, peer_cpu = median(per_cpu["subject"]), median(per_cpu["baseline"])
            out[name]["events_per_cpu_s"] = {k: round(median(v)) for k, v in per_cpu.items()}
            out[name]["cpu_ratio"] = round(ours_cpu / peer_cpu, 3)
            line += f"; per CPU second {ours_cpu / peer_cpu:.2f}x"
        for side in more:
            rate = median(samples[side])
            out[name][f"{side}_events_per_s"] = round(rate)
            out[name][f"{side}_ratio"] = round(rate / peer_rate, 3)
            line += f"; {EXTRA_LABELS[side]} {rate:,.0f} ev/s, {rate / peer_rate:.2f}x"
        print(line)
    return out


def unavailable() -> str | None:
    try:
        import eventsourcing.sqlite  # noqa: F401
    except ImportError:
        return "the eventsourcing baseline is not installed (pip install -e '.[dev]')"
    return None
