"""Appends on a peer's own workloads: the ``eventsourcing`` library's SQLite recorder.

Two rows of ``bench/append``, each measured beside that recorder in the same
run (alternating, median of the rounds):

- ``bulk``: one append of 10,000 events to one stream;
- ``sequential``: 100 single-event appends, one after another, each awaited.

Ours hashes every event onto its stream's chain, runs every projection over
it and keeps the log gapless, all in the append's transaction; the recorder
inserts rows. Its events are handed over already encoded (``StoredEvent``
bytes), ours as Python objects the store encodes: the comparison leaves
the encoding to our side. Both files are WAL with SQLite's default
``synchronous=FULL``, so an acknowledged append is on disk in both.
Target: at least 1.0x the recorder on both rows.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import median
from sessionstream import projections
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import NewEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore

BULK = 10_000
SEQUENTIAL = 100
TOPIC = "bench:Appended"
TYPE = "bench.appended"

#: (events, scratch directory) -> seconds the appends took
Workload = Callable[[int, Path], float]


def payload(i: int) -> dict[str, Any]:
    return {"i": i, "pad": "x" * 100}


def _recorder(path: Path) -> Any:
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    recorder = SQLiteApplicationRecorder(SQLiteDatastore(str(path)))
    recorder.create_table()
    return recorder


def time_recorder(recorder: Any, count: int, bulk: bool) -> float:
    """Seconds the recorder takes to insert ``count`` encoded events: in one call, or one a call."""
    from eventsourcing.persistence import StoredEvent

    originator = uuid.uuid4()
    events = [
        StoredEvent(originator, i + 1, TOPIC, json.dumps(payload(i)).encode()) for i in range(count)
    ]
    began = time.perf_counter()
    if bulk:
        recorder.insert_events(events)
    else:
        for event in events:
            recorder.insert_events([event])
    return time.perf_counter() - began


def peer_bulk(count: int, workdir: Path) -> float:
    return time_recorder(_recorder(workdir / "peer.db"), count, bulk=True)


def peer_sequential(count: int, workdir: Path) -> float:
    return time_recorder(_recorder(workdir / "peer.db"), count, bulk=False)


async def time_store(store: EventStore, count: int, bulk: bool) -> float:
    """Seconds an open, empty store takes to append ``count`` events: in one call, or one a call."""
    events = [NewEvent(TYPE, payload(i), {"actor": {"id": "b"}}) for i in range(count)]
    began = time.perf_counter()
    if bulk:
        await store.append("bench-1", events, expected_version=0)
    else:
        for version, event in enumerate(events):
            await store.append("bench-1", [event], expected_version=version)
    elapsed = time.perf_counter() - began
    assert await store.head_position() == count
    return elapsed


async def _ours(count: int, path: Path, bulk: bool) -> float:
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    try:
        return await time_store(store, count, bulk)
    finally:
        await store.close()


def ours_bulk(count: int, workdir: Path) -> float:
    return asyncio.run(_ours(count, workdir / "store.db", bulk=True))


def ours_sequential(count: int, workdir: Path) -> float:
    return asyncio.run(_ours(count, workdir / "store.db", bulk=False))


ROWS: dict[str, tuple[int, Workload, Workload]] = {
    "bulk": (BULK, ours_bulk, peer_bulk),
    "sequential": (SEQUENTIAL, ours_sequential, peer_sequential),
}


def _in_scratch(workload: Workload) -> Callable[[int], float]:
    def once(count: int) -> float:
        with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
            return workload(count, Path(tmp))

    return once


def run(rounds: int) -> dict[str, Any]:
    return compare(
        {name: (n, _in_scratch(ours), _in_scratch(peer)) for name, (n, ours, peer) in ROWS.items()},
        rounds,
    )


def compare(
    rows: dict[str, tuple[int, Callable[[int], float], Callable[[int], float]]], rounds: int
) -> dict[str, Any]:
    """Each row: our events/s and the recorder's, alternating who goes first.

    A row is (events, ours, the recorder's), each side taking the event count
    and answering the seconds its appends took.
    """
    out: dict[str, Any] = {}
    for name, (count, ours, peer) in rows.items():
        samples: dict[str, list[float]] = {"subject": [], "baseline": []}
        for round_no in range(max(rounds, 3)):
            sides = [("subject", ours), ("baseline", peer)]
            for side, workload in sides if round_no % 2 == 0 else sides[::-1]:
                samples[side].append(count / workload(count))
        ours_rate, peer_rate = median(samples["subject"]), median(samples["baseline"])
        out[name] = {
            "events": count,
            "subject_events_per_s": round(ours_rate),
            "baseline_events_per_s": round(peer_rate),
            "ratio": round(ours_rate / peer_rate, 3),
            "target": "ratio >= 1.0",
            "met": ours_rate >= peer_rate,
            "samples": {side: [round(v) for v in values] for side, values in samples.items()},
        }
        print(
            f"  peer {name} ({count:,} events): ours {ours_rate:,.0f} ev/s, "
            f"eventsourcing {peer_rate:,.0f} ev/s, {ours_rate / peer_rate:.2f}x"
        )
    return out


def unavailable() -> str | None:
    try:
        import eventsourcing.sqlite  # noqa: F401
    except ImportError:
        return "the eventsourcing baseline is not installed (pip install -e '.[dev]')"
    return None
