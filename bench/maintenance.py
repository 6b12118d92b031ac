"""Maintenance in bounded memory: verify, rebuild, export, import and replay at 10^4 and 10^6.

Issue 14 asks each of these commands to stream whatever the size of the store,
at most 150 MB peak RSS at 10^6 events (measured before: verify 331-401 MB,
rebuild 202 MB). Each command runs as the CLI does, in its own process
(``python -m sessionstream ...``, started from a small launcher so its
``ru_maxrss`` is its own: ``bench/scale_measure.py``), on a copy of a store
built through the service's own write paths (``bench/scale_build.py``):

- ``verify`` (the log and every read model), ``rebuild``, ``export`` of the
  whole log to a file, ``import`` of that file into a new store, and
  ``replay`` of a session;
- beside them, the floor: ``verify`` of an empty store (the interpreter, the
  package and an open store; what no streaming can remove).

For each size it prints wall time and peak RSS (medians of ``--rounds``), the
ratio of the largest size to the smallest, and each RSS beside the 150 MB
target at the largest size. The stores come from the scale benchmark's cache
(built when missing: about 20 minutes for 10^6) unless ``--store`` names
built stores (a ``scale-*.db`` with its ``.json``).

With ``--postgres`` each log is also imported (``sessionstream import``) into a
throwaway schema of the local ``test`` database once, and every command runs
there too: one round, no medians.

    python -m bench.maintenance [--rounds 3] [--quick] [--sizes 1e4,1e6] [--store PATH ...]
        [--postgres]
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench import scale_build, scale_measure
from bench.common import base_parser, median, print_table, write_json
from bench.scale_build import Built, progress

COMMANDS = ("verify", "rebuild", "export", "import", "replay")
TARGET_MB = 150.0


def run_round(built: Built, work: Path) -> dict[str, float]:
    """Every command once on a fresh copy of ``built``: {command_s, command_rss_mb}."""
    store = scale_measure.copy_store(built.path, work / "store.db")
    dump = work / "export.ndjson"
    dump.unlink(missing_ok=True)
    target = work / "import.db"
    for stale in work.glob("import.db*"):
        stale.unlink()
    session = built.samples[0].session_id
    args = {
        "verify": ("verify", "--db", str(store)),
        "export": ("export", "--db", str(store), "--out", str(dump)),
        "import": ("import", str(dump), "--db", str(target)),
        "replay": ("replay", session, "--db", str(store)),
        "rebuild": ("rebuild", "--db", str(store)),  # last: it rewrites the copy
    }
    values: dict[str, float] = {}
    for command in ("verify", "export", "import", "replay", "rebuild"):
        progress(f"{built.events:,} events: sessionstream {command}")
        for key, value in scale_measure.cli(*args[command]).items():
            values[f"{command}_{key}"] = value
    return values


async def postgres_round(built: Built, work: Path) -> dict[str, float]:
    """The log imported into a throwaway PostgreSQL schema, then every command there."""
    from bench.scale_pg import settle, throwaway_schema

    dump = work / "pg-export.ndjson"
    dump.unlink(missing_ok=True)
    source = scale_measure.copy_store(built.path, work / "pg-source.db")
    scale_measure.cli("export", "--db", str(source), "--out", str(dump))
    values: dict[str, float] = {}
    async with throwaway_schema() as url:
        progress(f"postgres {built.events:,} events: sessionstream import")
        for key, value in scale_measure.cli("import", str(dump), "--database-url", url).items():
            values[f"import_{key}"] = value
        await settle(url)
        out = work / "pg-again.ndjson"
        args = {
            "verify": ("verify", "--database-url", url),
            "export": ("export", "--database-url", url, "--out", str(out)),
            "replay": ("replay", built.samples[0].session_id, "--database-url", url),
            "rebuild": ("rebuild", "--database-url", url),
        }
        for command, argv in args.items():
            progress(f"postgres {built.events:,} events: sessionstream {command}")
            out.unlink(missing_ok=True)
            for key, value in scale_measure.cli(*argv).items():
                values[f"{command}_{key}"] = value
    out.unlink(missing_ok=True)
    dump.unlink(missing_ok=True)
    return values


def floor(work: Path) -> dict[str, float]:
    """``verify`` of an empty store: what every command pays before reading anything."""
    empty = work / "empty.db"
    for stale in work.glob("empty.db*"):
        stale.unlink()
    dump = work / "empty.ndjson"
    dump.write_text("")
    scale_measure.cli("import", str(dump), "--db", str(empty), "--unverified")
    measured = scale_measure.cli("verify", "--db", str(empty))
    return {"floor_s": measured["s"], "floor_rss_mb": measured["rss_mb"]}


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: median([r[key] for r in rounds]) for key in rounds[0]}


def figures(results: dict[int, dict[str, float]]) -> dict[str, dict[str, Any]]:
    sizes = sorted(results)
    rows: dict[str, dict[str, Any]] = {}
    names = [("floor", "empty store (verify)"), *((c, c) for c in COMMANDS)]
    for name, label in names:
        for stat, unit in (("rss_mb", "peak RSS MB"), ("s", "seconds")):
            key = f"{name}_{stat}"
            row: dict[str, Any] = {"label": f"{label} {unit}"}
            for size in sizes:
                row[str(size)] = round(results[size][key], 4)
            row["ratio"] = round(results[sizes[-1]][key] / results[sizes[0]][key], 3)
            rows[key] = row
    return rows


def pg_figures(pg: dict[int, dict[str, float]]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for command in ("import", "verify", "export", "replay", "rebuild"):
        for stat, unit in (("rss_mb", "peak RSS MB"), ("s", "seconds")):
            key = f"{command}_{stat}"
            row: dict[str, Any] = {"label": f"{command} {unit}"}
            for size in sorted(pg):
                row[str(size)] = round(pg[size][key], 4)
            rows[key] = row
    return rows


def targets(rows: dict[str, dict[str, Any]], large: int) -> dict[str, dict[str, Any]]:
    return {
        f"{command}_rss": {
            "at": large,
            "target": f"<= {TARGET_MB:.0f} MB",
            "value": rows[f"{command}_rss_mb"][str(large)],
            "met": rows[f"{command}_rss_mb"][str(large)] <= TARGET_MB,
        }
        for command in COMMANDS
    }


def main() -> None:
    parser = base_parser(__doc__, rounds=3)
    parser.add_argument("--sizes", help="events per store (default 1e4,1e6; --quick: 1e3,1e4)")
    parser.add_argument("--cache", type=Path, help="where built stores are kept")
    parser.add_argument(
        "--store", type=Path, action="append", default=[], help="a built store (scale-*.db)"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="also each size imported into PostgreSQL (once)"
    )
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    cache = args.cache or Path(tempfile.gettempdir()) / "sessionstream-scale"
    if args.store:
        stores = {b.events: b for b in (Built.load(path) for path in args.store)}
    else:
        text = args.sizes or ("1e3,1e4" if args.quick else "1e4,1e6")
        sizes = sorted({int(float(part)) for part in text.split(",") if part.strip()})
        stores = {size: scale_build.cached(size, cache) for size in sizes}
    work = Path(tempfile.mkdtemp(prefix="maintenance-", dir=cache if cache.exists() else None))
    try:
        results: dict[int, dict[str, float]] = {}
        pg: dict[int, dict[str, float]] = {}
        for size, built in sorted(stores.items()):
            measured = []
            for n in range(rounds):
                progress(f"{built.events:,} events: round {n + 1} of {rounds}")
                measured.append(run_round(built, work) | floor(work))
            results[size] = medians(measured)
            if args.postgres:
                pg[size] = asyncio.run(postgres_round(built, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = figures(results)
    large = max(results)
    sizes = sorted(results)
    print_table(
        ["figure", *(f"{s:,} events" for s in sizes), f"{large:,} / {sizes[0]:,}"],
        [[r["label"], *(r[str(s)] for s in sizes), r["ratio"]] for r in rows.values()],
    )
    checks = targets(rows, large)
    for name, check in checks.items():
        verdict = "met" if check["met"] else "NOT met"
        print(f"target {name} at {large:,}: {check['target']}: {check['value']:,.1f} {verdict}")
    write_json(
        "maintenance",
        {
            "benchmark": "maintenance",
            "rounds": rounds,
            "quick": args.quick,
            "stores": {
                str(size): {"events": b.events, "sessions": b.sessions, "turns": b.turns}
                for size, b in stores.items()
            },
            "figures": rows,
            "targets": checks,
            **({"postgres": pg_figures(pg)} if pg else {}),
        },
    )
    if pg:
        pg_rows = pg_figures(pg)
        print_table(
            ["PostgreSQL (imported, once)", *(f"{s:,} events" for s in sorted(pg))],
            [[r["label"], *(r[str(s)] for s in sorted(pg))] for r in pg_rows.values()],
        )


if __name__ == "__main__":
    main()
