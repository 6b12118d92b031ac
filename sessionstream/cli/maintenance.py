"""Auditor and operator commands over the log: verify, rebuild, replay, export, import.

Each works on either backend through the ``EventStore`` contract, so the same
command checks a laptop's SQLite file and a cluster's PostgreSQL database.
Exit codes: 0 fine, 1 the check found a problem, 2 the command could not run
(no such database, a file that is not an export, a target that is not empty).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import shlex
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from sessionstream.cli.audit import export_checkpoint, import_problems
from sessionstream.cli.commands import command, described, missing_db, open_store
from sessionstream.core.errors import SessionStreamError
from sessionstream.core.readmodels import SessionState
from sessionstream.core.settings import Settings
from sessionstream.core.vocabulary import (
    SESSION_PREFIX,
    TERMINAL,
    EventType,
    campaign_stream,
    session_stream,
)
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.eventstore.transfer import (
    campaign_scope,
    check,
    decode_lines,
    export,
    import_into,
    session_scope,
    whole_log,
)
from sessionstream.eventstore.verify import VerifyReport, verify_store
from sessionstream.projections.session import apply_session

PREVIEW = 72
PAGE = 5000


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
            "0 after refolding, 2 when there is no database",
        ),
    )
    p = sub.add_parser(
        "replay",
        parents=[common],
        **described(
            "print a session's history as a readable timeline",
            "0, 1 when the log has no such session, 2 when there is no database",
        ),
    )
    p.add_argument("session_id")
    p.add_argument("--deltas", action="store_true", help="show every streamed text delta")
    p = sub.add_parser(
        "export",
        parents=[common],
        **described(
            "write the log, one campaign or one session as NDJSON",
            "0, 1 for a campaign or session the log does not have, "
            "2 when there is no database or --out exists",
        ),
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--campaign", help="the campaign, its sessions and their runs")
    scope.add_argument("--session", help="the session and its runs")
    p.add_argument("--out", help="file to write (default: standard output)")
    p = sub.add_parser(
        "import",
        parents=[common],
        **described(
            "load an NDJSON export into an empty store and fold its read models",
            "0 once imported, 2 for a missing or malformed file or a store that is not empty",
        ),
    )
    p.add_argument("file", help="a file written by 'sessionstream export'")
    p.add_argument("--public-key", help="also check the export's signature with this vkey file")
    p.add_argument(
        "--unverified",
        action="store_true",
        help="import even if the export fails 'verify-export' against its own checkpoint",
    )


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


async def _with_store(settings: Settings, work: Any, *, create: bool = False) -> Any:
    store: EventStore = open_store(settings, create=create)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


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
        return _fail(missing)

    async def work(store: EventStore) -> VerifyReport:
        return await verify_store(store, allow_gaps=args.allow_gaps)

    report: VerifyReport = asyncio.run(_with_store(settings, work))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print("\n".join(describe(report)))
    return 0 if report.ok else 1


# rebuild -----------------------------------------------------------------------------
@command("rebuild")
def rebuild(args: argparse.Namespace, settings: Settings) -> int:
    if missing := missing_db(settings):
        return _fail(missing)

    async def work(store: EventStore) -> int:
        return await store.rebuild()

    started = time.perf_counter()
    count: int = asyncio.run(_with_store(settings, work))
    elapsed = time.perf_counter() - started
    print(f"rebuilt every read model and snapshot from {count:,} events in {elapsed:.2f} s")
    return 0


# replay ------------------------------------------------------------------------------
def preview(text: Any, width: int = PREVIEW) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def who(event: RecordedEvent) -> str:
    actor = event.metadata.get("actor")
    if not isinstance(actor, dict):
        return "unknown"
    kind, ident = str(actor.get("type", "?")), str(actor.get("id", "?"))
    short = {"user": ident[:8], "run": ident[:12]}.get(kind, ident)  # enough to tell apart
    return f"{kind}:{short}"


def unified(before: str, after: str, name: str) -> list[str]:
    diff = difflib.unified_diff(
        before.splitlines(), after.splitlines(), f"{name} (before)", f"{name} (after)", lineterm=""
    )
    return ["    " + line for line in diff]


def pretty(value: Any) -> str:
    return "" if value is None else json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def draft_text(row: Mapping[str, Any]) -> str:
    if row["draft_subject"] is None and row["draft_body"] is None:
        return ""
    return f"Subject: {row['draft_subject'] or ''}\n\n{row['draft_body'] or ''}"


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def row_changes(event_type: str, old: SessionState | None, new: SessionState) -> list[str]:
    """What one session event changed, for a person: previews and unified diffs."""
    before: Mapping[str, Any] = old["row"] if old else {k: None for k in new["row"]}
    after: Mapping[str, Any] = new["row"]
    lines: list[str] = []
    if old is None:
        lines.append(f"  created for campaign {after['campaign_id']}, node {after['node_id']}")
    old_msgs, new_msgs = before["messages"] or [], after["messages"] or []
    if new_msgs != old_msgs:
        if new_msgs[: len(old_msgs)] == old_msgs:
            for message in new_msgs[len(old_msgs) :]:
                role = message.get("role", "?") if isinstance(message, dict) else "?"
                content = message.get("content", "") if isinstance(message, dict) else message
                lines.append(f"  + {role}: {preview(content)}")
        else:
            lines.append(f"  messages replaced: {len(old_msgs)} -> {len(new_msgs)}")
    if before["skeleton"] != after["skeleton"]:
        lines.append(
            f"  skeleton (framework_version {before['framework_version']} -> "
            f"{after['framework_version']}):"
        )
        lines.extend(unified(pretty(before["skeleton"]), pretty(after["skeleton"]), "skeleton"))
    elif before["framework_version"] != after["framework_version"]:
        lines.append(
            f"  framework_version: {before['framework_version']} -> {after['framework_version']}"
        )
    if draft_text(before) != draft_text(after):
        lines.append("  draft:")
        lines.extend(unified(draft_text(before), draft_text(after), "draft"))
    implicit = event_type in (
        EventType.SKELETON_REVISED,
        EventType.SKELETON_ROLLED_BACK,
        EventType.DRAFT_REVISED,
        EventType.DRAFT_ROLLED_BACK,
    )
    for name in ("skeleton_history", "draft_history"):
        if before[name] != after[name] and not implicit and old is not None:
            lines.append(f"  {name}: {_count(before[name])} -> {_count(after[name])} entries")
    if before["generated_examples"] != after["generated_examples"] and old is not None:
        lines.append(
            "  generated_examples: "
            f"{_count(before['generated_examples'])} -> {_count(after['generated_examples'])}"
            + (" (cleared)" if after["generated_examples"] is None else "")
        )
    for name in ("title", "task_status"):
        if before[name] != after[name] and old is not None:
            lines.append(f"  {name}: {before[name]!r} -> {after[name]!r}")
    if new["deleted"] and not (old is not None and old["deleted"]):
        lines.append("  session deleted (history kept)")
    return lines


def run_details(event: RecordedEvent) -> list[str]:
    data = event.data
    if event.type == EventType.RUN_CREATED:
        wanted = data.get("input") or {}
        said = wanted.get("message") if isinstance(wanted, dict) else None
        leads = wanted.get("leads") if isinstance(wanted, dict) else None
        what = f"message {preview(said)!r}" if said else f"{_count(leads)} lead(s)"
        return [f"  {data.get('kind', '?')} run {event.stream_id[4:]}: {what}"]
    if event.type == EventType.RUN_FAILED:
        return [f"  error: {preview(data.get('error'))}"]
    if event.type == EventType.RUN_CANCELED:
        return [f"  reason: {preview(data.get('reason'))}"]
    if event.type == EventType.EXAMPLES_PROGRESS:
        return [f"  {data.get('done')}/{data.get('total')} examples"]
    if event.type == EventType.EXAMPLE_GENERATED:
        return [f"  {data.get('lead_id')}: {preview(data.get('subject'))}"]
    if event.type == EventType.MESSAGE_COMPLETED:
        message = data.get("message") or {}
        return [f"  {message.get('role', '?')}: {preview(message.get('content'))}"]
    if event.type == EventType.MESSAGE_DELTA:
        return [f"  {preview(data.get('text'))!r}"]
    return []


def timeline(events: Iterable[RecordedEvent], *, deltas: bool = False) -> Iterator[str]:
    """The readable history of one session and its runs, event by event."""
    state: SessionState | None = None
    streamed: dict[str, list[int]] = {}  # run -> [deltas, characters]
    for event in events:
        head = f"#{event.position:<6} {event.recorded_at}  {who(event):<24} {event.type}"
        if event.stream_id.startswith(SESSION_PREFIX):
            new = apply_session(state, event) or state
            if new is None:
                yield head
                continue
            yield head
            yield from row_changes(event.type, state, new)
            state = new
            continue
        if event.type == EventType.MESSAGE_DELTA:
            counts = streamed.setdefault(event.stream_id, [0, 0])
            counts[0] += 1
            counts[1] += len(str(event.data.get("text", "")))
            if not deltas:
                continue
        yield head
        yield from run_details(event)
        if event.type in TERMINAL and event.stream_id in streamed:
            count, chars = streamed.pop(event.stream_id)
            yield f"  ({count} text deltas, {chars} characters streamed)"


@command("replay")
def replay(args: argparse.Namespace, settings: Settings) -> int:
    if missing := missing_db(settings):
        return _fail(missing)
    session_id = args.session_id.lower()

    async def work(store: EventStore) -> list[RecordedEvent]:
        keys = frozenset({session_stream(session_id)})
        found: list[RecordedEvent] = []
        after = 0
        while True:
            page = await store.read_all(after, limit=PAGE, keys=keys)
            found.extend(page)
            if len(page) < PAGE:
                return found
            after = page[-1].position

    events: list[RecordedEvent] = asyncio.run(_with_store(settings, work))
    if not events:
        return _fail(f"no session {session_id} in this log", 1)
    print(
        f"session {session_id}: {len(events)} events, "
        f"{events[0].recorded_at} .. {events[-1].recorded_at}"
    )
    for line in timeline(events, deltas=args.deltas):
        print(line)
    return 0


# export / import ---------------------------------------------------------------------
@command("export")
def export_(args: argparse.Namespace, settings: Settings) -> int:
    if missing := missing_db(settings):
        return _fail(missing)
    target = Path(args.out) if args.out else None
    if target is not None and target.exists():
        return _fail(f"{target} exists; refusing to overwrite it")

    async def work(store: EventStore) -> tuple[str, int] | str:
        if args.campaign:
            scope = await campaign_scope(store, args.campaign.lower())
            stream = campaign_stream(args.campaign.lower())
        elif args.session:
            scope = session_scope(args.session.lower())
            stream = session_stream(args.session.lower())
        else:
            scope, stream = whole_log(), None
        if stream is not None and await store.stream_version(stream) == 0:
            # an empty file and exit 0 read as "exported, it was empty": a typo went unseen
            return f"no {scope.name} in this log"
        pending = export_checkpoint(settings, store)
        signed = await pending if pending is not None else None
        if target is None:
            return scope.name, await export(store, scope, sys.stdout, signed)
        partial = target.with_name(target.name + ".partial")
        with _private(partial) as out:
            count = await export(store, scope, out, signed)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
        return scope.name, count

    done: tuple[str, int] | str = asyncio.run(_with_store(settings, work))
    if isinstance(done, str):
        return _fail(done, 1)
    name, count = done
    where = target or "standard output"
    print(f"exported {count:,} events of {name} to {where}", file=sys.stderr)
    return 0


def _private(path: Path) -> TextIO:
    """``path`` opened for writing, readable by its owner alone: an export is the log."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a partial file left by an earlier attempt keeps its old mode
    return os.fdopen(fd, "w", encoding="utf-8")


def verify_command(settings: Settings, *, gaps: bool) -> str:
    """The verify command for the store just imported into, as the user can paste it:
    the installed script, the same store, and ``--allow-gaps`` for a scoped export
    (without it, verify rejects the positions a scoped export skips)."""
    if not settings.database_url:
        where = f"--db {shlex.quote(settings.db_path)}"
    elif os.environ.get("SESSIONSTREAM_DATABASE_URL") == settings.database_url:
        where = '--database-url "$SESSIONSTREAM_DATABASE_URL"'
    else:  # the URL may hold a password: name it, never print it
        where = "--database-url URL"
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0].endswith("sessionstream") else None
    program = shlex.quote(str(script)) if script is not None else ".venv/bin/sessionstream"
    return f"{program} verify {where}" + (" --allow-gaps" if gaps else "")


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        yield from handle


@command("import")
def import_(args: argparse.Namespace, settings: Settings) -> int:
    source = Path(args.file)
    if not source.is_file():
        return _fail(f"no file {source}")
    try:
        plan = check(decode_lines(_lines(source)))
    except (SessionStreamError, UnicodeDecodeError) as exc:
        return _fail(f"{source}: {exc}")
    if not args.unverified:
        try:
            problems = import_problems(source, args.public_key)
        except (SessionStreamError, OSError) as exc:
            return _fail(f"{source}: {exc}")
        if problems:
            for problem in problems[:20]:
                print(f"FAIL {problem}", file=sys.stderr)
            return _fail(f"{source} fails verify-export; nothing imported (--unverified to force)")

    async def work(store: EventStore) -> int:
        return await import_into(store, decode_lines(_lines(source)))

    try:
        count: int = asyncio.run(_with_store(settings, work, create=True))
    except SessionStreamError as exc:
        return _fail(str(exc))
    out: TextIO = sys.stdout
    print(
        f"imported {count:,} events in {plan.streams:,} streams "
        f"(positions {plan.first:,}..{plan.last:,}); read models folded",
        file=out,
    )
    if plan.gaps:
        print(f"positions skip {plan.gaps} time(s): this was a scoped export", file=out)
    print(f"check it with: {verify_command(settings, gaps=bool(plan.gaps))}", file=out)
    return 0
