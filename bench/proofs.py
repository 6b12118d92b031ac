"""Merkle proofs on a large log: how long one inclusion or consistency proof takes.

The issue's target: a proof on a 10^6-event log served in under 5 ms. For each
size (10^4 and 10^6 by default) the log is written straight into a SQLite file's
``events`` table (only positions and hashes matter to the tree), the tree
integrated once (timed too), then in each of ``--rounds`` rounds ``--proofs``
inclusion proofs at random positions and as many consistency proofs between
random sizes are asked of the store's tree, as the HTTP handler asks them, each
checked with ``merkle.verify_*``. The baseline, measured in the same round on the
same thread hop, is the cheapest read there is: one event's hash by position.
Figures are medians over rounds of each round's median and p99.

    python -m bench.proofs [--sizes 10000 1000000] [--proofs 1000] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bench.common import base_parser, median, percentile, print_table, write_json
from sessionstream.eventstore import merkle
from sessionstream.eventstore.hashcodec import encode_hash
from sessionstream.eventstore.sqlite.schema import SCHEMA
from sessionstream.eventstore.sqlite.tree import SQLiteTree

T = TypeVar("T")


def fill(path: Path, events: int) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    rows = (
        (p, f"s-{p % 1000}", p // 1000 + 1, f"e{p}", "x", "{}", "{}", None, "t",
         encode_hash(hashlib.sha256(str(p).encode()).hexdigest()))
        for p in range(1, events + 1)
    )  # fmt: skip
    conn.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
    conn.commit()
    conn.close()


def read_hash(conn: sqlite3.Connection, position: int) -> object:
    return conn.execute("SELECT hash FROM events WHERE position = ?", (position,)).fetchone()


def _summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99)}


async def measure(path: Path, proofs: int, rounds: int) -> dict[str, Any]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    pool = ThreadPoolExecutor(1)

    def run(fn: Callable[[sqlite3.Connection], T]) -> Any:
        return asyncio.get_running_loop().run_in_executor(pool, fn, conn)

    tree = SQLiteTree(run)
    await tree.open(str(path))  # its own thread and read connection, as a store opens it
    started = time.perf_counter()
    size = await tree.integrate()
    integrate_s = time.perf_counter() - started
    root = await tree.root(size)
    rng = random.Random(7)
    per_round: dict[str, list[dict[str, float]]] = {"read": [], "inclusion": [], "consistency": []}
    for _ in range(rounds):
        read: list[float] = []
        inclusion: list[float] = []
        consistency: list[float] = []
        for _ in range(proofs):
            position = rng.randint(1, size)
            t = time.perf_counter()
            await run(partial(read_hash, position=position))
            read.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            path_ = await tree.inclusion(position, size)
            inclusion.append((time.perf_counter() - t) * 1000)
            leaf = merkle.leaf_hash(hashlib.sha256(str(position).encode()).digest())
            assert merkle.verify_inclusion(position - 1, size, leaf, path_, root)
        for _ in range(proofs):
            old = rng.randint(1, size)
            t = time.perf_counter()
            hashes = await tree.consistency(old, size)
            consistency.append((time.perf_counter() - t) * 1000)
            assert merkle.verify_consistency(old, size, await tree.root(old), root, hashes)
        for name, sample in (
            ("read", read),
            ("inclusion", inclusion),
            ("consistency", consistency),
        ):
            per_round[name].append(_summary(sample))
    await tree.close()
    pool.shutdown()
    conn.close()
    figures: dict[str, Any] = {"events": size, "integrate_s": round(integrate_s, 2)}
    for name, summaries in per_round.items():
        figures[name] = {
            key: round(median([s[key] for s in summaries]), 3) for key in ("median_ms", "p99_ms")
        }
    for name in ("inclusion", "consistency"):
        figures[name]["p99_vs_read"] = round(
            figures[name]["p99_ms"] / max(figures["read"]["p99_ms"], 1e-6), 1
        )
    return figures


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--proofs", type=int, default=1000)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.proofs, args.rounds = [10_000], 200, 1
    results: list[dict[str, Any]] = []
    for events in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-proofs-") as tmp:
            path = Path(tmp) / "log.db"
            started = time.perf_counter()
            fill(path, events)
            print(f"wrote {events:,} events in {time.perf_counter() - started:.1f}s")
            results.append(asyncio.run(measure(path, args.proofs, args.rounds)))
    rows = [
        [
            r["events"],
            r["integrate_s"],
            r["read"]["p99_ms"],
            r["inclusion"]["median_ms"],
            r["inclusion"]["p99_ms"],
            r["consistency"]["median_ms"],
            r["consistency"]["p99_ms"],
            r["inclusion"]["p99_vs_read"],
        ]
        for r in results
    ]
    print_table(
        ["events", "integrate s", "read p99 ms", "incl p50", "incl p99", "cons p50", "cons p99",
         "incl p99 / read"],
        rows,
    )  # fmt: skip
    largest = results[-1]
    worst = max(largest["inclusion"]["p99_ms"], largest["consistency"]["p99_ms"])
    met = worst < 5
    print(
        f"target: a proof under 5 ms (p99) at {largest['events']:,}: {'met' if met else 'MISSED'}"
    )
    write_json(
        "proofs",
        {
            "what": "Merkle inclusion/consistency proof latency, SQLite tree; baseline: one "
            "event's hash read by position on the same thread hop",
            "load_average": os.getloadavg()[0],
            "rounds": args.rounds,
            "proofs_per_round": args.proofs,
            "sizes": results,
            "target": {"p99_ms_under": 5, "met": met},
        },
    )


if __name__ == "__main__":
    main()
