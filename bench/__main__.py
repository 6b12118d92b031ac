"""Run every benchmark in ``bench/`` and summarise them in one table.

Each script runs in its own subprocess (``python -m bench.<name>``, plus
``--quick`` when given here) so one cannot warm or poison another's process;
PostgreSQL benchmarks (``*_pg``) run only when a server answers. Afterwards
every ``bench/results/*.json`` is collected into ``bench/results/summary.json``
and ``bench/results/SUMMARY.md``, with the machine they ran on (cores, RAM,
CPU model, Python, date), since the figures only mean something beside it.

``scale`` (how every cost grows from 10^4 to 10^6 events; about 25 minutes)
and ``maintenance`` (verify, rebuild, export, import and replay at 10^4 and
10^6) run only when named: ``python -m bench --only scale``.

    python -m bench [--quick] [--only append,load] [--skip load] [--summarize]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import RESULTS, format_cell

BENCH = Path(__file__).parent
#: modules here that are helpers, not benchmarks
HELPERS = frozenset(
    {
        "__init__",
        "__main__",
        "common",
        "fanout_procs",
        "http",
        "scale_build",
        "scale_measure",
        "scale_pg",
    }
)
#: the order benchmarks run in; any other script found in bench/ runs after these
ORDER = ("append", "runs", "stream", "history", "load", "append_pg", "stream_pg")
#: run only when named in ``--only``: ``scale`` and ``maintenance`` build a 10^6-event
#: store (about 25 minutes; they share its cache); ``append_ab`` compares two git builds
OPT_IN = frozenset({"scale", "maintenance", "append_ab"})
TIMEOUT_S = {"default": 3600.0, "quick": 900.0}


def discover() -> list[str]:
    found = {
        path.stem
        for path in BENCH.glob("*.py")
        if path.stem not in HELPERS and '__name__ == "__main__"' in path.read_text()
    }
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def postgres_reachable() -> bool:
    if os.environ.get("SESSIONSTREAM_DATABASE_URL"):
        return True
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "ram_gib": None,
        "cpu_model": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: keep what platform knows
        pass
    return info


def run_one(name: str, quick: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else [])]
    print(f"\n=== {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=BENCH.parent,
            timeout=TIMEOUT_S["quick" if quick else "default"],
            check=False,
        )
        status = "ok" if done.returncode == 0 else "failed"
        code: int | None = done.returncode
    except subprocess.TimeoutExpired:
        status, code = "timed out", None
    return {
        "name": name,
        "command": " ".join(command[1:]),
        "status": status,
        "exit_code": code,
        "seconds": round(time.perf_counter() - started, 1),
    }


# summarising ----------------------------------------------------------------------------
def comparisons(value: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object that reports a ``ratio`` (subject beside its baseline), with its path."""
    if isinstance(value, dict):
        if "ratio" in value:
            yield path or "/", {k: v for k, v in value.items() if not isinstance(v, dict | list)}
        for key, item in value.items():
            if key != "samples":
                yield from comparisons(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from comparisons(item, f"{path}[{index}]")


def verdicts(value: Any, path: str = "") -> Iterator[tuple[str, bool]]:
    """Every ``met`` flag: did a target hold?"""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "met" and isinstance(item, bool):
                yield path or "/", item
            elif key != "samples":
                yield from verdicts(item, f"{path}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from verdicts(item, f"{path}[{index}]")


def headline(value: dict[str, Any]) -> dict[str, Any]:
    """Top-level figures of a result without comparisons (e.g. a ``median`` block)."""
    block = value.get("median")
    if isinstance(block, dict):
        return {k: v for k, v in block.items() if isinstance(v, int | float)}
    return {k: v for k, v in value.items() if isinstance(v, int | float) and k != "rounds"}


def collect(started: float) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for path in sorted(RESULTS.glob("*.json")):
        if path.name == "summary.json":
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        results[path.stem] = {
            "file": f"bench/results/{path.name}",
            "refreshed": path.stat().st_mtime >= started,
            "data": data,
        }
    return results


def markdown(info: dict[str, Any], runs: list[dict[str, Any]], results: dict[str, Any]) -> str:
    lines = [
        "# Benchmark summary",
        "",
        f"Measured {info['date']} on {info['cores']} cores, {info['ram_gib']} GiB RAM, "
        f"{info['cpu_model']}, {info['implementation']} {info['python']} ({info['os']}). "
        "Machines are shared: judge ratios measured in the same run, not absolute numbers.",
        "",
        "| benchmark | status | seconds | targets met | result |",
        "|---|---|---:|---|---|",
    ]
    ran = {run["name"]: run for run in runs}
    for name in [*ran, *(n for n in results if n not in ran)]:
        run = ran.get(name, {"status": "not run (earlier result)", "seconds": "-"})
        result = results.get(name)
        flags = list(verdicts(result["data"])) if result else []
        met = f"{sum(ok for _, ok in flags)}/{len(flags)}" if flags else "-"
        where = result["file"] if result else "-"
        lines.append(f"| {name} | {run['status']} | {run['seconds']} | {met} | {where} |")
    for name, result in results.items():
        data = result["data"]
        stale = "" if result["refreshed"] else " (not refreshed by this run)"
        lines += ["", f"## {name}{stale}", ""]
        rows = list(comparisons(data))
        if rows:
            lines += ["| where | figures | ratio |", "|---|---|---:|"]
            for path, fields in rows:
                figures = ", ".join(
                    f"{k}={format_cell(v)}" for k, v in fields.items() if k not in ("ratio",)
                )
                lines.append(f"| {path} | {figures} | {format_cell(fields['ratio'])} |")
        else:
            scalars = headline(data)
            lines += [f"- {k}: {format_cell(v)}" for k, v in scalars.items()] or ["- (no figures)"]
        flags = list(verdicts(data))
        if flags:
            lines.append("")
            lines += [f"- target {path}: {'met' if ok else 'NOT met'}" for path, ok in flags]
    return "\n".join(lines) + "\n"


def skip(name: str, why: str) -> dict[str, Any]:
    return {"name": name, "status": why, "seconds": 0.0, "exit_code": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", help="comma-separated benchmark names")
    parser.add_argument("--skip", default="", help="comma-separated benchmark names")
    parser.add_argument(
        "--summarize", action="store_true", help="run nothing: rebuild the summary from results/"
    )
    args = parser.parse_args()
    names = [] if args.summarize else discover()
    if args.only:
        wanted = set(args.only.split(","))
        names = [n for n in names if n in wanted]
    else:
        names = [n for n in names if n not in OPT_IN]
    skipped = set(filter(None, args.skip.split(",")))
    has_pg = postgres_reachable()
    # with --summarize every result counts as this run's: nothing was re-measured
    started = 0.0 if args.summarize else time.time()
    runs: list[dict[str, Any]] = []
    for name in names:
        if name in skipped:
            runs.append(skip(name, "skipped"))
        elif name.endswith("_pg") and not has_pg:
            runs.append(
                {
                    "name": name,
                    "status": "skipped (no PostgreSQL)",
                    "seconds": 0.0,
                    "exit_code": None,
                }
            )
        else:
            runs.append(run_one(name, args.quick))
    info = machine()
    results = collect(started)
    summary = {
        "machine": info,
        "quick": args.quick,
        "runs": runs,
        "targets": {
            name: dict(verdicts(r["data"]))
            for name, r in results.items()
            if list(verdicts(r["data"]))
        },
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(info, runs, results)
    (RESULTS / "SUMMARY.md").write_text(text)
    print("\n" + text)
    print(f"wrote {RESULTS / 'SUMMARY.md'} and {RESULTS / 'summary.json'}")
    if any(r["status"] in ("failed", "timed out") for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
