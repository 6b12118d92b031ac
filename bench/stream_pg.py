"""Cross-node delivery on PostgreSQL: a delta appended on node A, received on node B.

Node A is this process's ``PostgresEventStore``; node B is another process
with its own store instance on the same schema, subscribed to the log (it
learns of A's commits only through ``LISTEN/NOTIFY`` and its ordered pump).
A subscriber on node A itself is the baseline, measured in the same run.

Load: ``--runs`` concurrent runs each append one ``message.delta`` every
``--pace-ms`` (a model streaming tokens), as ``server/runs.py`` does. Latency is
from the moment A calls ``append`` to the moment the subscriber has the event
(``time.monotonic`` is one clock for every process on a host), so it includes
the commit. Reports p50/p99 per node and the B/A ratio, median over rounds.

    python -m bench.stream_pg [--rounds 3] [--runs 10] [--seconds 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import asyncpg

from sessionstream import projections
from sessionstream.eventstore.model import NewEvent
from sessionstream.eventstore.postgres import PostgresEventStore

RESULTS = Path(__file__).parent / "results"
DSN = os.environ.get(
    "SESSIONSTREAM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def receive(
    store: PostgresEventStore, after: int, expected: int, into: dict[str, float]
) -> None:
    async for event in store.subscribe(after):
        if event.type == "message.delta":
            into[event.event_id] = time.monotonic()
            if len(into) >= expected:
                return


def node_b(dsn: str, schema: str, expected: int, pipe: Connection) -> None:
    """The other node: its own process, store instance and event loop."""

    async def main() -> dict[str, float]:
        store = PostgresEventStore(dsn, projections.ALL, schema=schema, pool_size=2)
        await store.open()
        try:
            got: dict[str, float] = {}
            task = asyncio.create_task(receive(store, await store.head_position(), expected, got))
            await asyncio.sleep(0.2)  # subscribed and live before A starts
            pipe.send("ready")
            await asyncio.wait_for(task, 120)
            return got
        finally:
            await store.close()

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    pipe.send(asyncio.run(main()))


async def one_round(dsn: str, runs: int, pace_ms: float, seconds: float) -> dict[str, Any]:
    schema = f"bench_stream_{uuid.uuid4().hex[:10]}"
    store = PostgresEventStore(dsn, projections.ALL, schema=schema, pool_size=4)
    await store.open()
    per_run = max(1, int(seconds * 1000 / pace_ms))
    expected = runs * per_run
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=node_b, args=(dsn, schema, expected, child))
    proc.start()
    try:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, parent.recv) == "ready"
        local: dict[str, float] = {}
        local_task = asyncio.create_task(
            receive(store, await store.head_position(), expected, local)
        )
        sent: dict[str, float] = {}

        async def run(n: int) -> None:
            stream = f"run-run_{uuid.uuid4().hex}"
            for seq in range(per_run):
                event = NewEvent("message.delta", {"text": f"tok{seq} "}, {"run": n})
                sent[event.event_id] = time.monotonic()
                await store.append(stream, [event], expected_version=seq)
                await asyncio.sleep(pace_ms / 1000)

        await asyncio.gather(*(run(n) for n in range(runs)))
        await asyncio.wait_for(local_task, 60)
        remote: dict[str, float] = await loop.run_in_executor(None, parent.recv)
    finally:
        proc.join(30)
        await store.close()
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    a = [(local[k] - t) * 1000 for k, t in sent.items()]
    b = [(remote[k] - t) * 1000 for k, t in sent.items()]
    return {
        "events": expected,
        "a_p50_ms": pct(a, 0.5),
        "a_p99_ms": pct(a, 0.99),
        "b_p50_ms": pct(b, 0.5),
        "b_p99_ms": pct(b, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pace-ms", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dsn", default=DSN)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    seconds = 1.0 if args.quick else args.seconds
    results = []
    for n in range(rounds):
        r = asyncio.run(one_round(args.dsn, args.runs, args.pace_ms, seconds))
        results.append(r)
        print(
            f"round {n + 1}: {r['events']} deltas; node A p50 {r['a_p50_ms']:.2f} ms "
            f"p99 {r['a_p99_ms']:.2f} ms; node B p50 {r['b_p50_ms']:.2f} ms "
            f"p99 {r['b_p99_ms']:.2f} ms"
        )
    summary = {k: statistics.median(r[k] for r in results) for k in results[0] if k != "events"}
    print()
    print(f"{'subscriber':28} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'node A (same process)':28} {summary['a_p50_ms']:>8.2f} {summary['a_p99_ms']:>8.2f}")
    print(f"{'node B (other process)':28} {summary['b_p50_ms']:>8.2f} {summary['b_p99_ms']:>8.2f}")
    ratio = summary["b_p99_ms"] / summary["a_p99_ms"]
    print(f"B/A p99 ratio: {ratio:.2f}x (target: live deltas p99 <= 25 ms)")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "benchmark": "stream_pg",
        "load": {
            "runs": args.runs,
            "pace_ms": args.pace_ms,
            "seconds": seconds,
            "events_per_s": args.runs * 1000 / args.pace_ms,
        },
        "rounds": results,
        "median": {k: round(v, 3) for k, v in summary.items()},
        "b_over_a_p99": round(ratio, 2),
        "met": summary["b_p99_ms"] <= 25.0,
    }
    (RESULTS / "stream_pg.json").write_text(json.dumps(out, indent=2))
    print(f"wrote {RESULTS / 'stream_pg.json'}")


if __name__ == "__main__":
    main()
