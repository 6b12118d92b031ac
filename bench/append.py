"""Appends: the event store's API beside the raw database, measured in one run.

Each comparison pairs a subject with a baseline on the same machine, in the
same minute, and reports events/s for 1, 10 and 100 concurrent appenders
(median of ``--rounds``). Within a round the two run back to back, at each
concurrency in turn, which one first alternating between rounds; ``ratio``
is the ratio of the two medians, ``paired_ratio`` the median of each round's
own ratio, the steadier of the two when other work loads the machine. The
load average at the start and end of each comparison is kept with it.

- ``sqlite``: ``SQLiteEventStore.append`` from N asyncio tasks, each appending
  one event per call to its own stream with an expected version and awaiting
  the answer before the next (group commit, hash chain, read models and all),
  beside raw ``sqlite3`` inserting the same number of rows into the same
  ``events`` table (WAL, ``synchronous=FULL``), 100 rows per transaction.
  Target: at least 50% of the raw batched rate at 100 appenders.
- ``sqlite-tree``: the same appends while the log's Merkle tree is integrated
  every second (300 times the server's default) and once more to the head
  before the clock stops, beside the same appends without it. Target: at
  least 90% of the rate without the tree.
- ``postgres``: ``PostgresEventStore.append`` the same way (one writer
  connection per process group-commits under the ``log_head`` lock), beside
  the ``eventsourcing`` library's ``PostgresApplicationRecorder.insert_events``
  (one event per call, as an application saving one aggregate event) from N
  threads with a pool of min(N, 20) connections; it serialises inserts with
  ``LOCK TABLE`` so its notification ids are gapless in commit order too, the
  same guarantee. Both durable (``synchronous_commit`` on), each in a
  throwaway schema of ``SESSIONSTREAM_BENCH_DATABASE_URL`` (default the local
  ``test`` database). Target: at least 2x eventsourcing at 100 appenders.

- ``peer``: the ``eventsourcing`` SQLite recorder's own workloads, one
  append of 10,000 events and 100 sequential single appends, beside that
  recorder (``bench/append_peer.py``), both WAL and ``synchronous=FULL``
  (read back from both connections and kept in the JSON), and beside our
  writer's statements alone on raw ``sqlite3`` (the schema's floor); with
  each side's events per CPU second, steadier than the clock under load.
  Target: at least 1.0x on both.
- ``peer-pg``: the same two workloads on PostgreSQL, beside that library's
  PostgreSQL recorder (``bench/append_peer_pg.py``). Target: at least 1.0x on both.

Add a backend by writing two small ``Series`` functions and appending a
``Comparison`` to ``COMPARISONS``; the table and the JSON pick it up.

    python -m bench.append [--rounds 3] [--quick] [--no-uvloop]
        [--only sqlite|postgres|peer|peer-pg]
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import append_peer, append_peer_pg
from bench.common import (
    RESULTS,
    base_parser,
    install_uvloop,
    median,
    print_table,
    stopwatch,
    write_json,
)
from bench.pg import PG_DSN, eventsourcing_datastore, execute, scratch_schema
from sessionstream import projections
from sessionstream.eventstore.hashcodec import encode_hash
from sessionstream.eventstore.model import NewEvent, utc_now
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.sqlite.schema import SCHEMA

CONCURRENCY = (1, 10, 100)
#: events per measurement, by number of appenders (``--quick`` takes a quarter)
TOTAL_EVENTS = {1: 1000, 10: 5000, 100: 30000}
RAW_BATCH = 100

#: (appenders, events per appender, scratch directory) -> events per second
Series = Callable[[int, int, Path], float]


def payload(n: int, i: int) -> dict[str, Any]:
    return {"n": n, "i": i, "pad": "x" * 100}


# sqlite ----------------------------------------------------------------------------


def sqlite_store_rate(appenders: int, per_appender: int, workdir: Path) -> float:
    return asyncio.run(_sqlite_store_rate(appenders, per_appender, workdir / "store.db"))


def sqlite_tree_rate(appenders: int, per_appender: int, workdir: Path) -> float:
    """Appends while the Merkle tree is integrated every TREE_EVERY_S, and to the head
    before the clock stops: the cost the tree adds to the log."""
    path = workdir / "store.db"
    return asyncio.run(_sqlite_store_rate(appenders, per_appender, path, tree=True))


#: 300 times as often as the default checkpoint interval (``checkpoint_interval_s``, 300 s)
TREE_EVERY_S = 1.0


async def append_streams(store: SQLiteEventStore, appenders: int, per_appender: int) -> None:
    """``appenders`` tasks, each appending one event per call to its own stream."""

    async def appender(n: int) -> None:
        stream = f"bench-{n}"
        for version in range(per_appender):
            event = NewEvent("bench.appended", payload(n, version), {"actor": {"id": "b"}})
            await store.append(stream, [event], expected_version=version)

    await asyncio.gather(*(appender(n) for n in range(appenders)))


def tree_cpu(rounds: int, quick: bool) -> dict[str, Any]:
    """The process's CPU time integrating a log beside its CPU time appending it.

    The rates move with the machine's load (two cores, shared); CPU seconds
    spent on the same work hardly do, so this share is the steadier account
    of what the tree costs. Appended as ``sqlite-tree`` appends at the
    highest concurrency, then integrated in one go (a page at a time).
    """
    appenders = CONCURRENCY[-1]
    per = events_per_appender(appenders, quick)
    spent: list[tuple[float, float]] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-append-") as tmp:
            spent.append(asyncio.run(_tree_cpu(appenders, per, Path(tmp) / "store.db")))
    return {
        "events": appenders * per,
        "append_cpu_s": round(median([a for a, _ in spent]), 3),
        "integrate_cpu_s": round(median([i for _, i in spent]), 3),
        "share": round(median([i / a for a, i in spent]), 4),
    }


async def _tree_cpu(appenders: int, per_appender: int, path: Path) -> tuple[float, float]:
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    try:
        started = time.process_time()
        await append_streams(store, appenders, per_appender)
        appended = time.process_time()
        assert await store.tree.integrate() == appenders * per_appender
        return appended - started, time.process_time() - appended
    finally:
        await store.close()


async def _sqlite_store_rate(
    appenders: int, per_appender: int, path: Path, *, tree: bool = False
) -> float:
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    try:

        async def integrate() -> None:
            while True:
                await store.tree.integrate()
                await asyncio.sleep(TREE_EVERY_S)

        with stopwatch() as elapsed:
            integrating = asyncio.create_task(integrate()) if tree else None
            await append_streams(store, appenders, per_appender)
            if integrating is not None:
                integrating.cancel()
                await asyncio.gather(integrating, return_exceptions=True)
                assert await store.tree.integrate() == appenders * per_appender
        assert await store.head_position() == appenders * per_appender
        return appenders * per_appender / elapsed()
    finally:
        await store.close()


def raw_sqlite_batched_rate(appenders: int, per_appender: int, workdir: Path) -> float:
    """One connection inserting rows into the store's own table, 100 per commit."""
    total = appenders * per_appender
    conn = sqlite3.connect(workdir / "raw.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
        insert = (
            "INSERT INTO events (stream_id, version, event_id, type, data, metadata, "
            "correlation_id, recorded_at, hash) VALUES (?,?,?,?,?,?,?,?,?)"
        )
        metadata = json.dumps({"actor": {"id": "b"}}, separators=(",", ":"))
        digest = encode_hash("0" * 64)  # stored as the writer stores a hash
        with stopwatch() as elapsed:
            for start in range(0, total, RAW_BATCH):
                now = utc_now()
                rows = [
                    (
                        f"bench-{i % appenders}",
                        i // appenders + 1,
                        str(uuid.uuid4()),
                        "bench.appended",
                        json.dumps(payload(i % appenders, i // appenders), separators=(",", ":")),
                        metadata,
                        None,
                        now,
                        digest,
                    )
                    for i in range(start, min(start + RAW_BATCH, total))
                ]
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(insert, rows)
                conn.execute("COMMIT")
        count = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        assert count == total, count
        return total / elapsed()
    finally:
        conn.close()


# postgres --------------------------------------------------------------------------


def postgres_unavailable() -> str | None:
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'sessionstream[postgres]')"
    try:
        import eventsourcing.postgres  # noqa: F401
    except ImportError as exc:
        return f"the eventsourcing baseline needs {exc.name} (pip install 'psycopg[binary,pool]')"

    async def probe() -> None:
        conn = await asyncpg.connect(PG_DSN, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        return f"PostgreSQL is not reachable at {PG_DSN} ({exc})"
    return None


def postgres_store_rate(appenders: int, per_appender: int, workdir: Path) -> float:
    return asyncio.run(_postgres_store_rate(appenders, per_appender))


async def _postgres_store_rate(appenders: int, per_appender: int) -> float:
    from sessionstream.eventstore.postgres import PostgresEventStore

    schema = scratch_schema("ss")
    store = PostgresEventStore(PG_DSN, projections.ALL, schema=schema, pool_size=4)
    await store.open()
    try:

        async def appender(n: int) -> None:
            stream = f"bench-{n}"
            for version in range(per_appender):
                event = NewEvent("bench.appended", payload(n, version), {"actor": {"id": "b"}})
                await store.append(stream, [event], expected_version=version)

        with stopwatch() as elapsed:
            await asyncio.gather(*(appender(n) for n in range(appenders)))
        assert await store.head_position() == appenders * per_appender
        return appenders * per_appender / elapsed()
    finally:
        await store.close()
        await execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def eventsourcing_pg_rate(appenders: int, per_appender: int, workdir: Path) -> float:
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresApplicationRecorder

    schema = scratch_schema("es")
    asyncio.run(execute(f'CREATE SCHEMA "{schema}"'))
    datastore = eventsourcing_datastore(schema, pool_size=min(appenders, 20))
    try:
        recorder = PostgresApplicationRecorder(datastore, events_table_name="stored_events")
        recorder.create_table()
        errors: list[BaseException] = []
        barrier = threading.Barrier(appenders + 1)

        def appender(n: int) -> None:
            originator = uuid.uuid4()
            barrier.wait()
            try:
                for version in range(1, per_appender + 1):
                    state = json.dumps(payload(n, version), separators=(",", ":")).encode()
                    recorder.insert_events(
                        [StoredEvent(originator, version, "bench:Appended", state)]
                    )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=appender, args=(n,)) for n in range(appenders)]
        for thread in threads:
            thread.start()
        with stopwatch() as elapsed:
            barrier.wait()
            for thread in threads:
                thread.join()
        if errors:
            raise errors[0]
        return appenders * per_appender / elapsed()
    finally:
        datastore.close()
        asyncio.run(execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


# the comparisons -------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    name: str
    subject: str
    baseline: str
    measure: Series
    measure_baseline: Series
    #: subject/baseline the subject should reach at the highest concurrency
    target_ratio: float
    #: a reason this comparison cannot run here (e.g. no database), else None
    unavailable: Callable[[], str | None] = lambda: None


COMPARISONS: list[Comparison] = [
    Comparison(
        name="sqlite",
        subject="SQLiteEventStore.append",
        baseline=f"raw sqlite3, batches of {RAW_BATCH}, WAL, synchronous=FULL",
        measure=sqlite_store_rate,
        measure_baseline=raw_sqlite_batched_rate,
        target_ratio=0.5,
    ),
    Comparison(
        name="sqlite-tree",
        subject=f"SQLiteEventStore.append, tree integrated every {TREE_EVERY_S}s and at the end",
        baseline="SQLiteEventStore.append without the tree",
        measure=sqlite_tree_rate,
        measure_baseline=sqlite_store_rate,
        target_ratio=0.9,
    ),
    Comparison(
        name="postgres",
        subject="PostgresEventStore.append",
        baseline="eventsourcing 9.5 PostgresApplicationRecorder.insert_events",
        measure=postgres_store_rate,
        measure_baseline=eventsourcing_pg_rate,
        target_ratio=2.0,
        unavailable=postgres_unavailable,
    ),
]


def events_per_appender(appenders: int, quick: bool) -> int:
    total = TOTAL_EVENTS.get(appenders, 100 * appenders)
    if quick:
        total //= 4
    return max(1, total // appenders)


def measure_once(series: Series, appenders: int, per_appender: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-append-") as tmp:
        return series(appenders, per_appender, Path(tmp))


def run(comparison: Comparison, rounds: int, quick: bool) -> dict[str, Any]:
    samples: dict[str, dict[int, list[float]]] = {"subject": {}, "baseline": {}}
    load_start = [round(v, 2) for v in os.getloadavg()]
    for round_no in range(rounds):
        for appenders in CONCURRENCY:
            per = events_per_appender(appenders, quick)
            order = ["subject", "baseline"] if round_no % 2 == 0 else ["baseline", "subject"]
            for side in order:
                series = comparison.measure if side == "subject" else comparison.measure_baseline
                rate = measure_once(series, appenders, per)
                samples[side].setdefault(appenders, []).append(rate)
                label = comparison.subject if side == "subject" else "baseline"
                print(
                    f"  round {round_no + 1} {comparison.name} {label}: "
                    f"{appenders} appenders {rate:,.0f} ev/s"
                )
    rows: list[dict[str, Any]] = []
    for appenders in CONCURRENCY:
        ours, theirs = samples["subject"][appenders], samples["baseline"][appenders]
        paired = [a / b for a, b in zip(ours, theirs, strict=True)]
        rows.append(
            {
                "appenders": appenders,
                "events": appenders * events_per_appender(appenders, quick),
                "subject_events_per_s": round(median(ours)),
                "baseline_events_per_s": round(median(theirs)),
                "ratio": round(median(ours) / median(theirs), 3),
                # each round's two runs ran back to back: load that drifts between rounds
                # moves both, and the median of their ratios cancels it
                "paired_ratio": round(median(paired), 3),
                "samples": {side: [round(v) for v in samples[side][appenders]] for side in samples},
            }
        )
    return {
        "subject": comparison.subject,
        "baseline": comparison.baseline,
        "target": f"ratio >= {comparison.target_ratio} at {CONCURRENCY[-1]} appenders",
        "met": rows[-1]["ratio"] >= comparison.target_ratio,
        "rounds": rounds,  # the file's ``rounds`` is the last run's; ``--only`` keeps the others
        "load_average": {"start": load_start, "end": [round(v, 2) for v in os.getloadavg()]},
        "rows": rows,
    }


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--only", action="append", help="run only these comparisons")
    parser.add_argument("--no-uvloop", action="store_true", help="the default asyncio loop")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    loop = "asyncio" if args.no_uvloop or not install_uvloop() else "uvloop"
    results: dict[str, Any] = {}
    peer: dict[str, Any] = {}
    for comparison in COMPARISONS:
        if args.only and comparison.name not in args.only:
            continue
        reason = comparison.unavailable()
        if reason is not None:
            print(f"skipping {comparison.name}: {reason}")
            continue
        print(f"{comparison.name}: {comparison.subject} vs {comparison.baseline}")
        results[comparison.name] = run(comparison, rounds, args.quick)
        if comparison.name == "sqlite-tree":
            cpu = results[comparison.name]["cpu"] = tree_cpu(rounds, args.quick)
            print(
                f"  integrating {cpu['events']:,} events: {cpu['integrate_cpu_s']} CPU s, "
                f"appending them {cpu['append_cpu_s']} CPU s ({cpu['share']:.1%})"
            )
    if not args.only or "peer" in args.only:
        reason = append_peer.unavailable()
        print(f"skipping peer: {reason}" if reason else "peer: the eventsourcing SQLite recorder")
        peer = {} if reason else append_peer.run(rounds)
    if not args.only or "peer-pg" in args.only:
        reason = postgres_unavailable()
        print(f"skipping peer-pg: {reason}" if reason else "peer-pg: its PostgreSQL recorder")
        peer.update({} if reason else append_peer_pg.run(rounds))
    print()
    table = [
        (
            name,
            row["appenders"],
            row["subject_events_per_s"],
            row["baseline_events_per_s"],
            f"{row['ratio']:.2f}",
            f"{row['paired_ratio']:.2f}",
        )
        for name, result in results.items()
        for row in result["rows"]
    ]
    if table:  # ``--only peer`` has no concurrency rows
        headers = ("backend", "appenders", "store ev/s", "baseline ev/s", "ratio", "paired")
        print_table(headers, table)
    for name, result in results.items():
        print(
            f"{name}: target {result['target']}: {'met' if result['met'] else 'MISSED'} "
            f"(load average {result['load_average']['start'][0]} at the start, "
            f"{result['load_average']['end'][0]} at the end)"
        )
    for name, row in peer.items():
        floor = f"; per CPU second {row['cpu_ratio']:.2f}x" if "cpu_ratio" in row else ""
        for side, label in append_peer.EXTRA_LABELS.items():
            if f"{side}_ratio" in row:
                floor += f"; {label} {row[f'{side}_ratio']:.2f}x"
        if "durability" in row:  # equal durability, or the ratio means nothing
            ours, theirs = row["durability"]["subject"], row["durability"]["baseline"]
            floor += (
                f"; ours {ours['journal_mode']} synchronous={ours['synchronous']}, "
                f"theirs {theirs['journal_mode']} synchronous={theirs['synchronous']}"
            )
        print(
            f"peer {name} ({row['events']:,} events): {row['subject_events_per_s']:,} vs "
            f"{row['baseline_events_per_s']:,} ev/s, {row['ratio']:.2f}x{floor}: "
            f"target {row['target']}: {'met' if row['met'] else 'MISSED'} "
            f"(load average {row['load_average']['start'][0]} to {row['load_average']['end'][0]})"
        )
    if peer:
        results["peer"] = {
            "subject": "SQLiteEventStore.append",
            "baseline": "eventsourcing {SQLite,Postgres}ApplicationRecorder.insert_events",
            "rows": peer,
        }
    if args.only:  # keep the other comparisons' last results
        results = {**previous_comparisons(), **results}
    write_json(
        "append",
        {
            "benchmark": "append",
            "loop": loop,
            "rounds": rounds,
            "quick": args.quick,
            "comparisons": results,
        },
    )


def previous_comparisons() -> dict[str, Any]:
    path = RESULTS / "append.json"
    try:
        return dict(json.loads(path.read_text()).get("comparisons", {}))
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    main()
