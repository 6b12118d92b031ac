"""Scale: how every cost grows as the log grows from 10^4 to 10^6 events.

Builds stores of 10^4, 10^5 and 10^6 events shaped like real use, through
the service's own write paths (``bench/scale_build.py``: many users,
campaigns and sessions chatting through the run manager with the offline
engine, PATCHes, example batches, campaigns of 10, 1,000 and 10,000 sessions
where they fit), then measures on a copy of each (``bench/scale_measure.py``):

- bytes per event and per chat turn (the file after a WAL checkpoint), the
  token deltas' share, and the session row's JSON per turn beside them;
- appends: 100 concurrent appenders (one event per call, each its own
  stream), beside the same on an empty store in each round; single-append
  p50/p99;
- disk bytes written per appended event (``/proc/self/io`` ``write_bytes``,
  the store in this process, until its close checkpoints the WAL);
- GET of a session (HTTP, in-process server on a real port): first read
  since start-up (cold: not in the document cache) and again (warm);
- the session list of a campaign of 10, 1,000 and 10,000 sessions (the whole
  list; a page of 50 too when the endpoint takes ``limit``);
- ``as_of`` by position and by time, at the middle event of sessions spread
  over the log;
- catch-up from 0: a session channel (websocket) subscriber from
  ``after=0`` until the frame of the session's newest event;
- ``verify``, ``rebuild`` and ``export``: wall time and peak RSS, each a
  subprocess of the CLI (``python -m sessionstream ...``).

Every figure is printed with its ratio to the smallest size that has it.
10^7 events is built only when asked (``--sizes 1e4,1e5,1e6,1e7``: about an
hour more); otherwise the table's last column extrapolates each figure to
10^7 with a power law through the two largest sizes (f = c N^k; a figure
that improved between them is carried flat), which says how a trend
continues, not what 10^7 will measure.

Built stores are cached in ``--cache`` (default: $TMPDIR/sessionstream-scale),
keyed by size and by a digest of the code that writes them (the builder,
and the store, projections, engines and services), so a rerun measures the
same stores without rebuilding;
``--rebuild`` builds them again. ``--postgres`` also loads the smallest log and
the largest up to 10^6 into PostgreSQL (``sessionstream import`` into a
throwaway schema of the local ``test`` database, or
``SESSIONSTREAM_BENCH_DATABASE_URL``) and measures there what applies
(``bench/scale_pg.py``): bytes from ``pg_total_relation_size``, appends,
reads, lists, ``as_of``, catch-up, ``verify``/``export``/``rebuild``, with the
targets judged on them; ``--postgres-stores`` does only that, on stores
already built. Reads repeat ``--rounds`` times on a restarted server and
appends on fresh copies (medians); maintenance commands run once a size.
Progress goes to stderr.

    python -m bench.scale [--rounds 5] [--quick] [--sizes 1e4,1e5,1e6] [--postgres]
    python -m bench.scale --postgres-stores SMALL.db,LARGE.db [--rounds 3]

``--quick`` builds 10^3 and 10^4 and measures one round (a smoke test).
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench import scale_build, scale_measure, scale_pg
from bench.common import base_parser, install_uvloop, median, print_table, write_json
from bench.scale_build import Built, progress

APPENDERS = 100
#: model of the last column when 10^7 is not measured
EXTRAPOLATE_TO = 10**7
MODEL = (
    "power law f = c*N^k through the two largest sizes measured; "
    "a figure that improved between them is carried flat"
)
HIGHER_IS_BETTER = frozenset({"append_100_per_s", "append_100_vs_empty"})
#: (key, label, extrapolate?) in the order of the table; list rows are added per size
FIGURES: tuple[tuple[str, str, bool], ...] = (
    ("events", "events in the log", False),
    ("file_mb", "file MB (WAL checkpointed; PostgreSQL: the schema's relations)", True),
    ("events_table_share", "events table's share of those bytes", False),
    ("bytes_per_event", "bytes per event", True),
    ("bytes_per_turn", "bytes per chat turn (the file)", True),
    ("base_mb", "MB in use before the first turn (users, list campaigns)", False),
    ("in_use_per_turn", "bytes in use per chat turn (less that)", True),
    ("row_json_per_turn", "session row JSON per turn (bytes)", False),
    ("bytes_per_turn_x_row", "file per turn / row JSON per turn", False),
    ("in_use_per_turn_x_row", "in use per turn / row JSON per turn", False),
    ("kb_per_turn_events", "  KB a turn (whole file): events table", False),
    ("events_unused_share", "  ... its bytes unused", False),
    ("kb_per_turn_events_indexes", "  KB a turn: the events' indexes", False),
    ("kb_per_turn_packs", "  KB a turn: packs and their indexes", False),
    ("kb_per_turn_docs", "  KB a turn: docs and their indexes", False),
    ("kb_per_turn_other", "  KB a turn: everything else", False),
    ("delta_share_events", "token deltas: share of events", False),
    ("delta_share_row_bytes", "token deltas: share of event row bytes", False),
    ("delta_row_bytes", "token delta: row bytes", False),
    ("delta_data_bytes", "token delta: data bytes", False),
    ("append_100_per_s", "append, 100 appenders (events/s)", True),
    ("append_100_empty_per_s", "  ... on an empty store, same rounds", False),
    ("append_100_vs_empty", "  ... this store / the empty store", True),
    ("append_single_p50_ms", "single append p50 ms", True),
    ("append_single_p99_ms", "single append p99 ms", True),
    ("disk_bytes_per_event", "disk bytes written per appended event", True),
    ("get_cold_p50_ms", "GET session, cold, p50 ms", True),
    ("get_cold_p99_ms", "GET session, cold, p99 ms", True),
    ("get_warm_p50_ms", "GET session, warm, p50 ms", True),
    ("get_warm_p99_ms", "GET session, warm, p99 ms", True),
    *(
        (f"list_{n}_{stat}", f"list of {n:,} sessions {label}", True)
        for n in scale_build.LIST_SIZES
        for stat, label in (
            ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"),
            ("mb", "MB"),
            (f"page{scale_measure.PAGE}_p50_ms", f"page of {scale_measure.PAGE} p50 ms"),
            (f"page{scale_measure.PAGE}_p99_ms", f"page of {scale_measure.PAGE} p99 ms"),
            (f"page{scale_measure.PAGE}_cpu_ms", f"page of {scale_measure.PAGE} CPU ms a request"),
        )
    ),
    ("as_of_position_p50_ms", "as_of=<position> p50 ms", True),
    ("as_of_position_p99_ms", "as_of=<position> p99 ms", True),
    ("as_of_time_p50_ms", "as_of=<time> p50 ms", True),
    ("as_of_time_p99_ms", "as_of=<time> p99 ms", True),
    ("catch_up_p50_ms", "session channel from 0, p50 ms", True),
    ("catch_up_p99_ms", "session channel from 0, p99 ms", True),
    *(
        (f"{command}_{stat}", f"{command} {label}", True)
        for command in ("verify", "rebuild", "export")
        for stat, label in (("s", "seconds"), ("rss_mb", "peak RSS MB"))
    ),
    ("import_s", "import seconds", True),
    ("import_rss_mb", "import peak RSS MB", True),
    ("load_average", "load average (1 min) during the reads", False),
)


def parse_sizes(text: str) -> list[int]:
    return sorted({int(float(part)) for part in text.split(",") if part.strip()})


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    keys = {key for one in rounds for key in one}
    return {key: median([one[key] for one in rounds if key in one]) for key in keys}


def measure_size(
    built: Built,
    work: Path,
    rounds: int,
    requests: int,
    appends: tuple[int, int, int],
    *,
    reads_only: bool = False,
) -> dict[str, float]:
    """Every SQLite figure of one built store (the export is left in ``work`` for PostgreSQL);
    ``reads_only``: the log's shape and the reads, no maintenance commands or appends."""
    size = f"{built.events:,} events"
    store = scale_measure.copy_store(built.path, work / "store.db")
    values = scale_measure.shape(store, built)
    # after the shape, whose bytes leave the tree out as they always have
    progress(f"{size}: Merkle tree integrated in {scale_measure.integrate_tree(store):.1f} s")
    settings = scale_measure.settings_for(path=store)
    reads = []
    for n in range(rounds):
        progress(f"{size}: reads over HTTP, round {n + 1} of {rounds}")
        reads.append(asyncio.run(scale_measure.read_round(settings, built, requests)))
        reads[-1]["load_average"] = os.getloadavg()[0]
    values |= medians(reads)
    values["bytes_per_turn_x_row"] = values["bytes_per_turn"] / values["row_json_per_turn"]
    if built.base_bytes:  # recorded by the build since; older stores have only the file
        values["in_use_per_turn_x_row"] = values["in_use_per_turn"] / values["row_json_per_turn"]
    else:
        del values["in_use_per_turn"]
    if reads_only:
        for stale in work.glob("store.db*"):
            stale.unlink()
        return values
    for command, extra in (("verify", ()), ("export", ("--out", str(work / "export.ndjson")))):
        progress(f"{size}: sessionstream {command}")
        for key, value in scale_measure.cli(command, "--db", str(store), *extra).items():
            values[f"{command}_{key}"] = value
    progress(f"{size}: sessionstream rebuild")
    for key, value in scale_measure.cli("rebuild", "--db", str(store)).items():
        values[f"rebuild_{key}"] = value
    values |= append_figures(built, work, rounds, appends)
    for stale in [*work.glob("store.db*"), *work.glob("append.db*"), *work.glob("empty.db*")]:
        stale.unlink()
    return values


def append_figures(
    built: Built, work: Path, rounds: int, appends: tuple[int, int, int]
) -> dict[str, float]:
    """The append figures of one built store: each round on a fresh copy, beside an empty one."""
    size = f"{built.events:,} events"
    writes = []
    for n in range(rounds):
        progress(f"{size}: appends on a fresh copy and on an empty store, round {n + 1}")
        copy = scale_measure.copy_store(built.path, work / "append.db")
        subject = asyncio.run(scale_measure.sqlite_appends(copy, *appends))
        empty = fresh(work / "empty.db")
        baseline = asyncio.run(scale_measure.sqlite_appends(empty, *appends))["append_100_per_s"]
        subject["append_100_empty_per_s"] = baseline
        subject["append_100_vs_empty"] = subject["append_100_per_s"] / baseline
        writes.append(subject)
    for stale in [*work.glob("append.db*"), *work.glob("empty.db*")]:
        stale.unlink()
    return medians(writes)


def fresh(path: Path) -> Path:
    """``path`` with no store at it."""
    for stale in path.parent.glob(path.name + "*"):
        stale.unlink()
    return path


def warm_up(work: Path) -> None:
    """One unmeasured round first: the first appends in a process pay for its imports."""
    asyncio.run(scale_measure.sqlite_appends(fresh(work / "warm.db"), 10, 10, 10))
    fresh(work / "warm.db")


def extrapolate(points: dict[int, float], higher_is_better: bool) -> float | None:
    """The power law through the two largest sizes, at ``EXTRAPOLATE_TO``.

    A figure that got better between them is carried flat: a cost does not
    shrink as the log grows, so that is noise or a warmer cache, and
    following it down would promise what nothing measured.
    """
    (n1, f1), (n2, f2) = sorted(points.items())[-2:]
    if f1 <= 0 or f2 <= 0:
        return None
    k = math.log(f2 / f1) / math.log(n2 / n1)
    if (k > 0) == higher_is_better:
        k = 0.0
    return float(f2 * (EXTRAPOLATE_TO / n2) ** k)


def figures(results: dict[int, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Each figure by size, its ratio (largest / smallest size that has it), and the model."""
    out: dict[str, dict[str, Any]] = {}
    for key, label, model in FIGURES:
        points = {size: values[key] for size, values in results.items() if key in values}
        if not points:
            continue
        first, last = points[min(points)], points[max(points)]
        entry: dict[str, Any] = {"label": label}
        entry |= {str(size): round(value, 4) for size, value in sorted(points.items())}
        entry["ratio"] = round(last / first, 3) if first else None
        if model and len(points) >= 2 and EXTRAPOLATE_TO not in points:
            guess = extrapolate(points, key in HIGHER_IS_BETTER)
            entry[f"model_{EXTRAPOLATE_TO}"] = round(guess, 4) if guess is not None else None
        out[key] = entry
    return out


def cell(value: float | None, base: float | None) -> str:
    if value is None:
        return "-"
    text = (
        f"{value:,.3f}"
        if abs(value) < 1
        else f"{value:,.2f}"
        if abs(value) < 10
        else f"{value:,.0f}"
    )
    return f"{text} (x{value / base:.2f})" if base else text


def table(rows: dict[str, dict[str, Any]], sizes: list[int], title: str) -> None:
    print(f"\n{title}")
    columns = [str(s) for s in sizes]
    model = f"model_{EXTRAPOLATE_TO}"
    extra = [f"{EXTRAPOLATE_TO:,} (model)"] if EXTRAPOLATE_TO not in sizes else []
    lines = []
    for entry in rows.values():
        present = [entry[c] for c in columns if c in entry]
        base = present[0] if present else None
        line = [entry["label"], *(cell(entry.get(c), base) for c in columns)]
        if extra:
            line.append(cell(entry.get(model), base))
        lines.append(line)
    print_table(["figure", *(f"{s:,}" for s in sizes), *extra], lines)


def targets(rows: dict[str, dict[str, Any]], sizes: list[int]) -> dict[str, dict[str, Any]]:
    """Issue 14's targets, judged at the largest size against the smallest."""
    small, large = str(sizes[0]), str(sizes[-1])

    def at(key: str, size: str = large) -> float | None:
        value = rows.get(key, {}).get(size)
        return None if value is None else float(value)

    checks: list[tuple[str, str, float | None, float | None]] = [
        (
            "bytes_per_turn",
            "bytes in use per turn (pages not free, less those in use before the first "
            "turn) <= 3x the session row JSON per turn"
            if at("in_use_per_turn_x_row") is not None
            # PostgreSQL's, and stores built before the build recorded what was in use
            else "bytes per turn (the whole file, or the schema's relations) <= 3x the "
            "session row JSON per turn",
            at("in_use_per_turn_x_row") or at("bytes_per_turn_x_row"),
            3.0,
        ),
        (
            "append_100",
            f">= 0.8x the {int(small):,}-event store",
            at("append_100_per_s"),
            0.8 * (at("append_100_per_s", small) or 0),
        ),
        (
            "disk_bytes_per_event",
            f"<= 1.5x the {int(small):,}-event store",
            at("disk_bytes_per_event"),
            1.5 * (at("disk_bytes_per_event", small) or 0),
        ),
        ("as_of_time_p50", "<= 10 ms", at("as_of_time_p50_ms"), 10.0),
        (
            "list_10000_page50_p99",
            "<= 10 ms (a page of 50 of 10,000 sessions)",
            at(f"list_10000_page{scale_measure.PAGE}_p99_ms"),
            10.0,
        ),
        *(
            (f"{c}_rss", "<= 150 MB", at(f"{c}_rss_mb"), 150.0)
            for c in ("verify", "rebuild", "export")
        ),
    ]
    out: dict[str, dict[str, Any]] = {}
    for name, target, value, bound in checks:
        higher = name == "append_100"
        met = (
            value is not None
            and bound is not None
            and (value >= bound if higher else value <= bound)
        )
        out[name] = {"at": int(large), "target": target, "value": value, "met": met}
    return out


def measured_targets(rows: dict[str, dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """The targets a run measured (PostgreSQL has no disk-bytes figure: its writes are the
    server's, shared with every other client)."""
    return {k: v for k, v in targets(rows, sizes).items() if v["value"] is not None}


def print_targets(judged: dict[str, dict[str, Any]], backend: str) -> None:
    for name, check in judged.items():
        value = "-" if check["value"] is None else f"{check['value']:,.2f}"
        print(
            f"{backend} target {name} at {check['at']:,}: {check['target']}: {value} "
            f"{'met' if check['met'] else 'NOT met'}"
        )


def postgres_only(paths: list[Path], args: Any) -> None:
    """The PostgreSQL figures of stores already built (and measured on SQLite): each is
    exported with the CLI and imported into a throwaway schema, as ``--postgres`` does."""
    why_not = scale_pg.unavailable()
    if why_not:
        raise SystemExit(why_not)
    rounds = 1 if args.quick else args.rounds
    appends = (APPENDERS, 20 if args.quick else 100, 100 if args.quick else 300)
    work = Path(tempfile.mkdtemp(prefix="scale-pg-"))
    try:
        built = {b.events: b for b in (Built.load(p) for p in paths)}
        results: dict[int, dict[str, float]] = {}
        for events, store in sorted(built.items()):
            export = work / f"{events}.ndjson"
            progress(f"{events:,} events: sessionstream export")
            scale_measure.cli("export", "--db", str(store.path), "--out", str(export))
            results[events] = scale_pg.measure(
                store, export, rounds, 100 if args.quick else 300, appends
            )
            export.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sizes = sorted(results)
    rows = figures(results)
    table(rows, sizes, "PostgreSQL (logs built for SQLite, imported)")
    judged = measured_targets(rows, sizes)
    print_targets(judged, "postgres")
    write_json(
        "scale_pg",
        {
            "benchmark": "scale_pg",
            "rounds": rounds,
            "stores": {str(n): b.events for n, b in sorted(built.items())},
            "figures": rows,
            "targets": judged,
        },
    )


def main() -> None:
    parser = base_parser(__doc__, rounds=5)
    parser.add_argument("--sizes", help="events per store, e.g. 1e4,1e5,1e6 (the default)")
    parser.add_argument("--cache", type=Path, help="where built stores are kept")
    parser.add_argument("--rebuild", action="store_true", help="build the stores again")
    parser.add_argument("--postgres", action="store_true", help="also measure in PostgreSQL")
    parser.add_argument(
        "--postgres-stores",
        help="only PostgreSQL, on these built stores (comma-separated .db paths from the "
        "cache): writes bench/results/scale_pg.json",
    )
    parser.add_argument(
        "--stores",
        help="measure these built stores (comma-separated .db paths, with their .json) "
        "instead of the cache's for --sizes: a store built by an earlier build of the code",
    )
    parser.add_argument(
        "--reads-only",
        action="store_true",
        help="the shape and the reads alone (no maintenance commands, no appends): "
        "bench/results/scale_reads.json",
    )
    parser.add_argument(
        "--appends-only",
        action="store_true",
        help="measure only the appends (and their disk bytes): bench/results/scale_appends.json",
    )
    args = parser.parse_args()
    if args.reads_only and args.postgres:
        raise SystemExit("--reads-only measures no export for --postgres to import")
    if args.postgres_stores:
        postgres_only([Path(p) for p in args.postgres_stores.split(",")], args)
        return
    rounds = 1 if args.quick else args.rounds
    sizes = parse_sizes(args.sizes or ("1e3,1e4" if args.quick else "1e4,1e5,1e6"))
    given = {}
    if args.stores:
        for size, path in zip(sizes, args.stores.split(","), strict=True):
            given[size] = Built.load(Path(path))
    requests = 100 if args.quick else 300
    # (appenders, events each, single appends)
    appends = (APPENDERS, 20 if args.quick else 100, 100 if args.quick else 300)
    cache = args.cache or Path(tempfile.gettempdir()) / "sessionstream-scale"
    loop = "uvloop" if install_uvloop() else "asyncio"
    why_not_pg = scale_pg.unavailable() if args.postgres else None
    if why_not_pg:
        raise SystemExit(why_not_pg)
    work = cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    progress(f"sizes {sizes}, {rounds} round(s), cache {cache}")
    warm_up(work)
    stores: dict[int, Built] = {}
    results: dict[int, dict[str, float]] = {}
    pg_sizes = sorted({sizes[0], max(s for s in sizes if s <= 10**6)}) if args.postgres else []
    for size in sizes:
        built = stores[size] = given.get(size) or scale_build.cached(
            size, cache, rebuild=args.rebuild
        )
        (work / str(size)).mkdir()
        if args.appends_only:
            results[size] = append_figures(built, work / str(size), rounds, appends)
            continue
        results[size] = measure_size(
            built, work / str(size), rounds, requests, appends, reads_only=args.reads_only
        )
        if size not in pg_sizes:
            (work / str(size) / "export.ndjson").unlink(missing_ok=True)
    rows = figures(results)
    if args.appends_only:
        table(rows, sizes, "SQLite appends (ratios to the smallest store)")
        write_json(
            "scale_appends", {"benchmark": "scale_appends", "rounds": rounds, "figures": rows}
        )
        return
    table(rows, sizes, f"SQLite (ratios to the {sizes[0]:,}-event store; last column: {MODEL})")
    judged = targets(rows, sizes)
    if args.reads_only:  # the targets it measured
        judged = {k: v for k, v in judged.items() if v["value"] is not None}
    payload: dict[str, Any] = {
        "benchmark": "scale_reads" if args.reads_only else "scale",
        "loop": loop,
        "rounds": rounds,
        "quick": args.quick,
        "model": MODEL,
        "stores": {
            str(size): {
                "events": b.events,
                "turns": b.turns,
                "sessions": b.sessions,
                "users": b.users,
                "list_campaigns": [c.sessions for c in b.lists],
                "build_s": b.build_s,
            }
            for size, b in stores.items()
        },
        "figures": rows,
        "targets": judged,
    }
    if pg_sizes:
        pg = {
            size: scale_pg.measure(
                stores[size], work / str(size) / "export.ndjson", rounds, requests, appends
            )
            for size in pg_sizes
        }
        payload["postgres"] = figures(pg)
        payload["postgres_targets"] = measured_targets(payload["postgres"], pg_sizes)
        table(payload["postgres"], pg_sizes, "PostgreSQL (the same logs, imported)")
    shutil.rmtree(work, ignore_errors=True)
    print_targets(payload["targets"], "sqlite")
    print_targets(payload.get("postgres_targets", {}), "postgres")
    write_json(payload["benchmark"], payload)


if __name__ == "__main__":
    main()
