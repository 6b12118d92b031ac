"""Where ``LISTEN/NOTIFY`` stops scaling: listener nodes x events per second.

A writer node (this process's ``PostgresEventStore``) appends events at a
target rate, from many concurrent appenders as runs would; every commit (a
group of appends) sends one ``NOTIFY`` with the new head. ``--listeners``
other nodes, each its own process with its own store, ``LISTEN`` connection
and pump, tail the whole log: for every notification each reads the new
events from PostgreSQL and publishes them to its hub. Each event carries the
``time.monotonic()`` of its ``append`` call (one clock for every process on a
host); a listener's latency is its receipt minus that.

For each (listeners, rate) cell it reports the rate achieved, the commits per
second (how many notifications every listener handles: group commit makes it
less than the event rate), the log reads all listeners made per second,
p50/p99 delivery latency, and the CPU a listener node and the writer spend
per event (what caps a node's rate whatever the machine's load). A cell is
saturated when the writer falls 10% behind its target or the p99 passes
``--saturated-ms``.

    python -m bench.notify_pg [--rounds 3] [--listeners 1,3,6]
        [--rates 250,1000,2000,4000] [--seconds 3] [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import statistics
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import asyncpg

from bench.common import base_parser, install_uvloop, percentile, print_table, write_json
from sessionstream import projections
from sessionstream.eventstore.model import NewEvent
from sessionstream.eventstore.postgres import PostgresEventStore

DSN = os.environ.get(
    "SESSIONSTREAM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def cpu_self() -> float:
    """CPU seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def listener_process(dsn: str, schema: str, pipe: Connection) -> None:
    """One node that only tails the log. Per command ``(cell, expected)`` it answers
    with that cell's latencies (ms), once it has them all or after a timeout, and
    the notifications and log reads it had meanwhile."""

    async def main() -> None:
        store = PostgresEventStore(dsn, projections.ALL, schema=schema, pool_size=2)
        await store.open()
        got: dict[str, list[float]] = {}
        arrived = asyncio.Event()
        notified = [0]
        reads = [0]
        cpu = [cpu_self()]
        read_after = store.pump._read_after

        async def counted(position: int) -> Any:
            reads[0] += 1
            return await read_after(position)

        store.pump._read_after = counted
        assert store._lconn is not None
        await store._lconn.add_listener(
            store.channel, lambda *_: notified.__setitem__(0, notified[0] + 1)
        )

        async def tail() -> None:
            async for event in store.subscribe(await store.head_position()):
                cell = event.data.get("cell")
                if isinstance(cell, str):
                    got.setdefault(cell, []).append((time.monotonic() - event.data["t"]) * 1000)
                    arrived.set()

        async def have(cell: str, expected: int) -> None:
            while len(got.get(cell, ())) < expected:
                arrived.clear()
                await arrived.wait()

        task = asyncio.create_task(tail())
        loop = asyncio.get_running_loop()
        pipe.send("ready")
        try:
            while True:
                command = await loop.run_in_executor(None, pipe.recv)
                if command == "stop":
                    return
                if command == "mark":
                    notified[0] = reads[0] = 0
                    cpu[0] = cpu_self()
                    pipe.send("marked")
                    continue
                cell, expected = command
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(have(cell, expected), 30)
                pipe.send((got.pop(cell, []), notified[0], reads[0], cpu_self() - cpu[0]))
        finally:
            task.cancel()
            await store.close()

    install_uvloop()
    asyncio.run(main())


async def write_at(store: PostgresEventStore, cell: str, rate: float, seconds: float) -> int:
    """Append ``rate`` events/s for ``seconds`` from rate/50 appenders (one every 20 ms
    each, on a fixed schedule); returns how many were appended."""
    appenders = max(1, round(rate / 50))
    interval = appenders / rate
    end = time.monotonic() + seconds
    done = [0]

    async def appender(n: int) -> None:
        stream = f"run-{cell}-{n}"
        start = time.monotonic() + n * interval / appenders
        version = 0
        while True:
            due = start + version * interval
            if due >= end:
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            data = {"cell": cell, "t": time.monotonic(), "text": "tok "}
            await store.append(stream, [NewEvent("message.delta", data)], expected_version=version)
            version += 1
            done[0] += 1

    await asyncio.gather(*(appender(n) for n in range(appenders)))
    return done[0]


def ask(pipes: list[Connection], command: Any) -> list[Any]:
    for pipe in pipes:
        pipe.send(command)
    return [pipe.recv() for pipe in pipes]


async def one_round(
    dsn: str, listener_counts: list[int], rates: list[float], seconds: float, saturated_ms: float
) -> list[dict[str, Any]]:
    schema = f"bench_notify_{uuid.uuid4().hex[:10]}"
    store = PostgresEventStore(dsn, projections.ALL, schema=schema, pool_size=4)
    await store.open()
    ctx = mp.get_context("spawn")
    pipes: list[Connection] = []
    procs: list[Any] = []
    cells = []
    loop = asyncio.get_running_loop()
    try:
        for listeners in listener_counts:
            while len(procs) < listeners:  # listeners are added, never restarted
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=listener_process, args=(dsn, schema, child))
                proc.start()
                pipes.append(parent)
                procs.append(proc)
                assert await loop.run_in_executor(None, parent.recv) == "ready"
            active = pipes[:listeners]
            for rate in rates:
                cell = f"c{listeners}x{int(rate)}x{uuid.uuid4().hex[:4]}"
                await loop.run_in_executor(None, ask, pipes, "mark")
                load = os.getloadavg()[0]
                writer_cpu = cpu_self()
                began = time.monotonic()
                written = await write_at(store, cell, rate, seconds)
                took = time.monotonic() - began
                answers = await loop.run_in_executor(None, ask, active, (cell, written))
                latencies = [ms for got, *_ in answers for ms in got]
                delivered = sum(len(got) for got, *_ in answers)
                notifies = statistics.median(a[1] for a in answers)
                reads = sum(a[2] for a in answers)
                # what one listener node spends per event it ingests (read, decode, publish)
                cpu_per_event = statistics.median(a[3] for a in answers) / max(1, written)
                p99 = percentile(latencies, 0.99) if latencies else float("inf")
                achieved = written / took
                cells.append(
                    {
                        "listeners": listeners,
                        "target_events_per_s": rate,
                        "events_per_s": round(achieved, 1),
                        "notifies_per_s": round(notifies / took, 1),
                        "log_reads_per_s": round(reads / took, 1),
                        "listener_cpu_us_per_event": round(cpu_per_event * 1e6, 1),
                        "writer_cpu_us_per_event": round(
                            (cpu_self() - writer_cpu) / max(1, written) * 1e6, 1
                        ),
                        "delivered": delivered,
                        "expected": written * listeners,
                        "p50_ms": round(percentile(latencies, 0.5), 2) if latencies else None,
                        "p99_ms": round(p99, 2),
                        "load_1m": round(load, 2),
                        "saturated": achieved < 0.9 * rate
                        or p99 > saturated_ms
                        or delivered < written * listeners,
                    }
                )
                c = cells[-1]
                print(
                    f"{listeners} listener(s) x {rate:g}/s: {c['events_per_s']:g} events/s, "
                    f"{c['notifies_per_s']:g} notifies/s, p50 {c['p50_ms']} ms p99 {c['p99_ms']} ms"
                    f"{' SATURATED' if c['saturated'] else ''} (load {load:.1f})",
                    flush=True,
                )
    finally:
        for pipe in pipes:
            pipe.send("stop")
        for proc in procs:
            proc.join(30)
        await store.close()
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    return cells


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--listeners", default="1,3,6", help="listener nodes, comma-separated")
    parser.add_argument("--rates", default="250,1000,2000,4000", help="target events/s")
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell")
    parser.add_argument("--saturated-ms", type=float, default=100.0)
    parser.add_argument("--dsn", default=DSN)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    # ascending: each count adds listener processes to those already tailing
    listener_counts = [1, 2] if args.quick else sorted(int(x) for x in args.listeners.split(","))
    rates = [200.0, 800.0] if args.quick else [float(x) for x in args.rates.split(",")]
    seconds = 1.0 if args.quick else args.seconds
    install_uvloop()
    results = []
    for n in range(rounds):
        print(f"round {n + 1}", flush=True)
        results.append(
            asyncio.run(one_round(args.dsn, listener_counts, rates, seconds, args.saturated_ms))
        )
    summary = []
    for i, first in enumerate(results[0]):
        same = [r[i] for r in results]
        med = {
            k: round(statistics.median(c[k] for c in same), 2)
            for k in (
                "events_per_s",
                "notifies_per_s",
                "log_reads_per_s",
                "p50_ms",
                "p99_ms",
                "listener_cpu_us_per_event",
                "writer_cpu_us_per_event",
            )
            if all(c[k] is not None for c in same)
        }
        summary.append(
            {
                "listeners": first["listeners"],
                "target_events_per_s": first["target_events_per_s"],
                **med,
                "load_1m": [min(c["load_1m"] for c in same), max(c["load_1m"] for c in same)],
                "saturated_rounds": sum(c["saturated"] for c in same),
            }
        )
    print()
    print_table(
        [
            "listeners",
            "target/s",
            "events/s",
            "notifies/s",
            "reads/s",
            "p50 ms",
            "p99 ms",
            "listener us/ev",
            "writer us/ev",
            "sat",
            "load",
        ],
        [
            [
                s["listeners"],
                s["target_events_per_s"],
                s["events_per_s"],
                s["notifies_per_s"],
                s["log_reads_per_s"],
                s.get("p50_ms", "-"),
                s.get("p99_ms", "-"),
                s["listener_cpu_us_per_event"],
                s["writer_cpu_us_per_event"],
                f"{s['saturated_rounds']}/{rounds}",
                f"{s['load_1m'][0]:.1f}-{s['load_1m'][1]:.1f}",
            ]
            for s in summary
        ],
    )
    print(f"medians of {rounds} round(s), {seconds:g} s per cell; cores {os.cpu_count()}")
    write_json(
        "notify_pg_quick" if args.quick else "notify_pg",
        {
            "benchmark": "notify_pg",
            "seconds_per_cell": seconds,
            "saturated_ms": args.saturated_ms,
            "cpus": os.cpu_count(),
            "summary": summary,
            "rounds": results,
        },
    )


if __name__ == "__main__":
    main()
