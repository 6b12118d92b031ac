"""The log's own checks and refold: ``verify`` and ``rebuild``.

Each works on either backend through the ``EventStore`` contract, so the same
command checks a laptop's SQLite file and a cluster's PostgreSQL database.
``replay`` (``cli/replay.py``) and ``export``/``import`` (``cli/transfer.py``)
are the other commands over the whole log. Exit codes: 0 fine, 1 the check
found a problem, 2 the command could not run (no such database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from sessionstream.cli.commands import command, described
from sessionstream.cli.logstore import fail, missing_db, served, with_store
from sessionstream.core.settings import Settings
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.verify import VerifyReport, verify_store


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "verify",
        parents=[common],
        **described(
            "check hash chains, positions and every read model",
            "0 when everything checks, 1 naming the first problems found, "
            "2 when there is no database",
        ),
    )
    p.add_argument(
        "--allow-gaps",
        action="store_true",
        help="accept positions that skip numbers (a store imported from a scoped export)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.add_parser(
        "rebuild",
        parents=[common],
        **described(
            "drop every read model and refold the log",
            "0 after refolding, 2 when there is no database or a server holds it",
        ),
    )


# verify ------------------------------------------------------------------------------
def describe(report: VerifyReport) -> list[str]:
    lines = [
        f"verified {report.events:,} events in {report.streams:,} streams "
        f"(head position {report.head:,}) and {report.docs:,} read-model rows",
        f"log digest {report.digest}",
    ]
    if report.ok:
        lines.append(
            "OK: hash chains intact, positions gapless"
            + (" (gaps allowed)" if report.gaps_allowed else "")
            + ", every row equals a fresh fold of its events"
        )
        return lines
    first = report.first
    assert first is not None
    lines.append(f"FAILED: {report.problem_count} problem(s); the first:")
    if first.is_event:
        lines.append(
            f"  bad event at position {first.position}: stream {first.stream_id} "
            f"version {first.version} ({first.kind})"
        )
    elif first.doc_kind is not None:
        lines.append(f"  bad row: {first.doc_kind} {first.doc_key} ({first.kind})")
    lines.append(f"  {first.message}")
    for problem in report.problems[1:10]:
        lines.append(f"  also: {problem.message}")
    if report.problem_count > 10:
        lines.append(f"  ... and {report.problem_count - 10} more")
    return lines


@command("verify")
def verify(args: argparse.Namespace, settings: Settings) -> int:
    if missing := missing_db(settings):
        return fail(missing)

    async def work(store: EventStore) -> VerifyReport:
        return await verify_store(store, allow_gaps=args.allow_gaps)

    report: VerifyReport = asyncio.run(with_store(settings, work))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(describe(report)))
    return 0 if report.ok else 1


# rebuild -----------------------------------------------------------------------------
@command("rebuild")
def rebuild(args: argparse.Namespace, settings: Settings) -> int:
    if missing := missing_db(settings) or served(settings, "rebuilding its read models"):
        return fail(missing)

    async def work(store: EventStore) -> int:
        return await store.rebuild()

    started = time.perf_counter()
    count: int = asyncio.run(with_store(settings, work))
    elapsed = time.perf_counter() - started
    print(f"rebuilt every read model and snapshot from {count:,} events in {elapsed:.2f} s")
    return 0
