"""PostgreSQL appends of two builds, paired: did a change to the writer cost throughput?

Issue 19 moved the PostgreSQL writer off the lock-read-plan-write-commit
transaction (four round trips holding the cluster-wide ``log_head`` lock)
onto a read without the lock and a conditional one-statement write. This
bench measures both builds in one run: ``--before`` (a git ref, checked out
into a temporary worktree) and ``--after`` (another ref, or by default the
working tree, which must then not change meanwhile), alternating within each
round so load that drifts moves both, and reports the median events/s of
each and the median of the per-round ratios (after / before).

Two workloads, each ``PostgresEventStore.append`` with an expected version,
one event per call, each appender its own stream (``bench/append.py``'s):

- ``1 node``: one store, 1, 10 and 100 appenders (mostly the one-statement
  path planned on known facts, in both builds);
- ``3 nodes``: three stores on one schema, the appenders spread over them,
  so every node's head moves under it and batches take the path that reads
  (under the lock before, without it after) -- the contended case.

Each measurement runs in its own process of the build measured, on a
throwaway schema of ``SESSIONSTREAM_BENCH_DATABASE_URL`` (default the local
``test`` database).

    python -m bench.append_ab [--before REF] [--after REF] [--rounds 5] [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import base_parser, median, print_table, write_json

ROOT = Path(__file__).resolve().parent.parent
#: the build before issue 19's writer change
DEFAULT_BEFORE = "790728c^"
#: (nodes, appenders)
CASES = ((1, 1), (1, 10), (1, 100), (3, 3), (3, 30), (3, 99))
TOTAL_EVENTS = {1: 1000, 3: 1500, 10: 5000, 30: 6000, 99: 15000, 100: 30000}

#: run in a process of the build measured (its own ``sessionstream`` and ``bench``)
WORKER = """
import asyncio, json, os, sys, time, uuid
import asyncpg
from bench.common import install_uvloop
from sessionstream import projections
from sessionstream.eventstore.model import NewEvent
from sessionstream.eventstore.postgres import PostgresEventStore

DSN = os.environ.get("SESSIONSTREAM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
nodes, appenders, per = (int(a) for a in sys.argv[1:4])

async def main() -> float:
    schema = f"bench_ab_{uuid.uuid4().hex[:10]}"
    stores = [PostgresEventStore(DSN, projections.ALL, schema=schema, pool_size=4)
              for _ in range(nodes)]
    for store in stores:
        await store.open()
    try:
        async def appender(n: int) -> None:
            store = stores[n % nodes]
            for version in range(per):
                event = NewEvent("bench.appended", {"n": n, "i": version, "pad": "x" * 100},
                                 {"actor": {"id": "b"}})
                await store.append(f"bench-{n}", [event], expected_version=version)
        started = time.perf_counter()
        await asyncio.gather(*(appender(n) for n in range(appenders)))
        elapsed = time.perf_counter() - started
        assert await stores[0].head_position() == appenders * per
        return appenders * per / elapsed
    finally:
        for store in stores:
            await store.close()
        conn = await asyncpg.connect(DSN)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()

install_uvloop()
print(json.dumps(asyncio.run(main())))
"""


#: a shared server may refuse a connection now and then (too many clients): tries per point
ATTEMPTS = 3


def measure(tree: Path, nodes: int, appenders: int, per: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    for _ in range(ATTEMPTS):
        done = subprocess.run(
            [sys.executable, "-c", WORKER, str(nodes), str(appenders), str(per)],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode == 0:
            return float(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"the worker failed in {tree}, trying again: {done.stderr.splitlines()[-1:]}")
    raise RuntimeError(f"the worker failed in {tree} {ATTEMPTS} times:\n{done.stderr}")


def rev_parse(ref: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", ref], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def checkout(sha: str, where: Path) -> Path:
    """A detached worktree of ``sha`` (removed by the caller)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), sha],
        capture_output=True,
        check=True,
    )
    return where


def main() -> None:
    parser = base_parser(__doc__, rounds=5)
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="the git ref measured before")
    parser.add_argument("--after", help="the git ref measured after (default: the working tree)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    before_sha = rev_parse(args.before)
    after_sha = rev_parse(args.after) if args.after else None
    load_start = [round(v, 2) for v in os.getloadavg()]
    samples: dict[tuple[int, int], dict[str, list[float]]] = {
        case: {"before": [], "after": []} for case in CASES
    }
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        tree = checkout(before_sha, Path(tmp) / "before")
        after = ROOT if after_sha is None else checkout(after_sha, Path(tmp) / "after")
        try:
            for index in range(rounds):
                for nodes, appenders in CASES:
                    total = TOTAL_EVENTS[appenders] // (4 if args.quick else 1)
                    per = max(1, total // appenders)
                    sides = [("before", tree), ("after", after)]
                    if index % 2:
                        sides.reverse()  # neither build always goes first
                    for side, where in sides:
                        rate = measure(where, nodes, appenders, per)
                        samples[(nodes, appenders)][side].append(rate)
                    print(
                        f"round {index + 1}: {nodes} node(s), {appenders} appenders: "
                        f"before {samples[(nodes, appenders)]['before'][-1]:,.0f}, "
                        f"after {samples[(nodes, appenders)]['after'][-1]:,.0f} ev/s",
                        flush=True,
                    )
        finally:
            for made in {tree, after} - {ROOT}:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(made)],
                    capture_output=True,
                    check=False,
                )
    rows: list[dict[str, Any]] = []
    for (nodes, appenders), got in samples.items():
        ratios = [a / b for a, b in zip(got["after"], got["before"], strict=True)]
        rows.append(
            {
                "nodes": nodes,
                "appenders": appenders,
                "before_events_per_s": round(median(got["before"])),
                "after_events_per_s": round(median(got["after"])),
                "paired_ratio": round(median(ratios), 3),
                "samples": {side: [round(v) for v in got[side]] for side in got},
            }
        )
    print()
    print_table(
        ("nodes", "appenders", "before ev/s", "after ev/s", "paired after/before"),
        [
            (
                r["nodes"],
                r["appenders"],
                r["before_events_per_s"],
                r["after_events_per_s"],
                f"{r['paired_ratio']:.2f}",
            )
            for r in rows
        ],
    )
    load_end = [round(v, 2) for v in os.getloadavg()]
    print(
        f"before = {args.before} ({before_sha[:10]}), after = "
        f"{args.after or 'the working tree'} ({(after_sha or '')[:10]}); "
        f"{rounds} round(s); load average "
        f"{load_start[0]} at the start, {load_end[0]} at the end"
    )
    write_json(
        "append_ab",
        {
            "before": {"ref": args.before, "commit": before_sha},
            "after": {"ref": args.after or "working tree", "commit": after_sha},
            "rounds": rounds,
            "load_average": {"start": load_start, "end": load_end},
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
