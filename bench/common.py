"""Helpers every benchmark script shares: timing, medians, the table, the JSON.

Benchmarks measure a subject beside a baseline in the same run (the machines
are shared, so absolute numbers drift by +-25%); the ratio is what to judge.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def base_parser(doc: str | None, *, rounds: int = 3) -> argparse.ArgumentParser:
    """The options every bench takes: ``--rounds`` and ``--quick``."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=rounds, help="median of this many runs")
    parser.add_argument("--quick", action="store_true", help="fewer events, one round")
    return parser


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed: ...``; ``elapsed()`` is frozen on exit."""
    started = time.perf_counter()
    stopped: list[float] = []

    def elapsed() -> float:
        return (stopped[0] if stopped else time.perf_counter()) - started

    try:
        yield elapsed
    finally:
        stopped.append(time.perf_counter())


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank: a sample that was measured, never a blend."""
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])


def install_uvloop() -> bool:
    """Run on uvloop, as ``sessionstream serve`` does, when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        return False
    uvloop.install()
    return True


def format_cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[format_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` and say where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path
