"""``replay``: a session's history as a timeline a person reads, event by event.

Session events show what they changed in the session row (previews of new
messages, unified diffs of the skeleton and the draft); run events show what
the run was asked and how it ended, its text deltas counted rather than
printed unless ``--deltas`` asks for them.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from sessionstream.cli.commands import command, described
from sessionstream.cli.logstore import fail, missing_db, with_store
from sessionstream.core.readmodels import SessionState
from sessionstream.core.settings import Settings
from sessionstream.core.vocabulary import SESSION_PREFIX, TERMINAL, EventType, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.projections.session import apply_session

PREVIEW = 72
PAGE = 5000


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
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


class Timeline:
    """The readable history of one session and its runs, fed an event at a time: it
    holds the session's row and a count per streaming run, never the events, so
    ``replay`` prints a session of any length a page at a time."""

    def __init__(self, *, deltas: bool = False) -> None:
        self.deltas = deltas
        self.state: SessionState | None = None
        self.streamed: dict[str, list[int]] = {}  # run -> [deltas, characters]

    def lines(self, event: RecordedEvent) -> Iterator[str]:
        head = f"#{event.position:<6} {event.recorded_at}  {who(event):<24} {event.type}"
        if event.stream_id.startswith(SESSION_PREFIX):
            new = apply_session(self.state, event) or self.state
            yield head
            if new is not None:
                yield from row_changes(event.type, self.state, new)
                self.state = new
            return
        if event.type == EventType.MESSAGE_DELTA:
            counts = self.streamed.setdefault(event.stream_id, [0, 0])
            counts[0] += 1
            counts[1] += len(str(event.data.get("text", "")))
            if not self.deltas:
                return
        yield head
        yield from run_details(event)
        if event.type in TERMINAL and event.stream_id in self.streamed:
            count, chars = self.streamed.pop(event.stream_id)
            yield f"  ({count} text deltas, {chars} characters streamed)"


async def session_pages(
    store: EventStore, session_id: str, head: int
) -> AsyncIterator[list[RecordedEvent]]:
    """The session's events and its runs' (correlated to it) up to ``head``, a page at a time."""
    keys = frozenset({session_stream(session_id)})
    after = 0
    while page := await store.read_all(after, limit=PAGE, keys=keys, to_position=head):
        yield page
        if len(page) < PAGE:
            return
        after = page[-1].position


@command("replay")
def replay(args: argparse.Namespace, settings: Settings) -> int:
    if missing := missing_db(settings):
        return fail(missing)
    session_id = args.session_id.lower()

    async def work(store: EventStore) -> int:
        """Two reads of the session's pages: the first counts them for the heading,
        the second prints, so a session of any length is never held whole."""
        count, first, last = 0, "", ""
        head = await store.head_position()
        async for page in session_pages(store, session_id, head):
            count += len(page)
            first, last = first or page[0].recorded_at, page[-1].recorded_at
        if not count:
            return 0
        print(f"session {session_id}: {count} events, {first} .. {last}")
        lines = Timeline(deltas=args.deltas)
        async for page in session_pages(store, session_id, head):
            for event in page:
                for line in lines.lines(event):
                    print(line)
        return count

    if not asyncio.run(with_store(settings, work)):
        return fail(f"no session {session_id} in this log", 1)
    return 0
