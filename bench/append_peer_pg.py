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
from collections.abc import Callable
from typing import Any

from bench.append_peer import BULK, SEQUENTIAL, Spent, compare, time_recorder, time_store
from bench.pg import PG_DSN, eventsourcing_datastore, execute, scratch_schema
from sessionstream import projections

#: events -> what the appends took
Workload = Callable[[int], Spent]


async def _ours(count: int, bulk: bool) -> Spent:
    from sessionstream.eventstore.postgres import PostgresEventStore

    schema = scratch_schema("ss")
    store = PostgresEventStore(PG_DSN, projections.ALL, schema=schema, pool_size=2)
    await store.open()
    try:
        return await time_store(store, count, bulk)
    finally:
        await store.close()
        await execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def ours_bulk(count: int) -> Spent:
    return asyncio.run(_ours(count, bulk=True))


def ours_sequential(count: int) -> Spent:
    return asyncio.run(_ours(count, bulk=False))


def _peer(count: int, bulk: bool) -> Spent:
    from eventsourcing.postgres import PostgresApplicationRecorder

    schema = scratch_schema("es")
    asyncio.run(execute(f'CREATE SCHEMA "{schema}"'))
    datastore = eventsourcing_datastore(schema, pool_size=2)
    try:
        recorder = PostgresApplicationRecorder(datastore, events_table_name="stored_events")
        recorder.create_table()
        return time_recorder(recorder, count, bulk)
    finally:
        datastore.close()
        asyncio.run(execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def peer_bulk(count: int) -> Spent:
    return _peer(count, bulk=True)


def peer_sequential(count: int) -> Spent:
    return _peer(count, bulk=False)


ROWS: dict[str, tuple[int, Workload, Workload]] = {
    "pg-bulk": (BULK, ours_bulk, peer_bulk),
    "pg-sequential": (SEQUENTIAL, ours_sequential, peer_sequential),
}


def run(rounds: int) -> dict[str, Any]:
    return compare(ROWS, rounds)
