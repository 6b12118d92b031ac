"""The peer's own workloads on PostgreSQL: the ``eventsourcing`` PostgreSQL recorder.

Two rows of ``bench/append`` (issue 21), each beside that library's
``PostgresApplicationRecorder.insert_events`` in the same run (alternating,
median of the rounds):

- ``pg-bulk``: one append of 10,000 events to one stream;
- ``pg-sequential``: 100 single-event appends, one after another, each awaited.

Both durable (``synchronous_commit`` on), each in a throwaway schema of
``SESSIONSTREAM_BENCH_DATABASE_URL`` (default the local ``test`` database).
Ours hashes, projects and hands out gapless positions under the ``log_head``
lock; the recorder serialises its inserts with ``LOCK TABLE`` (the same
gapless guarantee) and is handed its events already encoded.
Target: at least 1.0x the recorder on both rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from bench.common import median
from sessionstream import projections
from sessionstream.eventstore.model import NewEvent

BULK = 10_000
SEQUENTIAL = 100
TOPIC = "bench:Appended"
TYPE = "bench.appended"

PG_DSN = os.environ.get(
    "SESSIONSTREAM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

#: events -> seconds the appends took
Workload = Callable[[int], float]


def payload(i: int) -> dict[str, Any]:
    return {"i": i, "pad": "x" * 100}


async def _execute(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _schema(kind: str) -> str:
    return f"bench_{kind}_{uuid.uuid4().hex[:10]}"


async def _ours(count: int, bulk: bool) -> float:
    from sessionstream.eventstore.postgres import PostgresEventStore

    schema = _schema("ss")
    store = PostgresEventStore(PG_DSN, projections.ALL, schema=schema, pool_size=2)
    await store.open()
    try:
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
    finally:
        await store.close()
        await _execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def ours_bulk(count: int) -> float:
    return asyncio.run(_ours(count, bulk=True))


def ours_sequential(count: int) -> float:
    return asyncio.run(_ours(count, bulk=False))


def _peer(count: int, bulk: bool) -> float:
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    url = urlparse(PG_DSN)
    schema = _schema("es")
    asyncio.run(_execute(f'CREATE SCHEMA "{schema}"'))
    datastore = PostgresDatastore(
        dbname=url.path.lstrip("/") or "postgres",
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or "",
        pool_size=2,
        max_overflow=0,
        schema=schema,
    )
    try:
        recorder = PostgresApplicationRecorder(datastore, events_table_name="stored_events")
        recorder.create_table()
        originator = uuid.uuid4()
        events = [
            StoredEvent(originator, i + 1, TOPIC, json.dumps(payload(i)).encode())
            for i in range(count)
        ]
        began = time.perf_counter()
        if bulk:
            recorder.insert_events(events)
        else:
            for event in events:
                recorder.insert_events([event])
        return time.perf_counter() - began
    finally:
        datastore.close()
        asyncio.run(_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def peer_bulk(count: int) -> float:
    return _peer(count, bulk=True)


def peer_sequential(count: int) -> float:
    return _peer(count, bulk=False)


ROWS: dict[str, tuple[int, Workload, Workload]] = {
    "pg-bulk": (BULK, ours_bulk, peer_bulk),
    "pg-sequential": (SEQUENTIAL, ours_sequential, peer_sequential),
}


def run(rounds: int) -> dict[str, Any]:
    """Each row: our events/s and the recorder's, alternating who goes first."""
    out: dict[str, Any] = {}
    for name, (count, ours, peer) in ROWS.items():
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
