"""History for auditors and undo: the session's events, and rollbacks.

- ``GET .../{id}/events?after=&limit=``: the session stream and its runs'
  streams in log order, each event with its hash (and the id and metadata the
  hash covers, so an auditor can recompute every chain from the API alone).
  Owner only; a deleted session's history stays readable to its owner.
- ``POST .../{id}/skeleton/rollback {"framework_version": N}`` and
  ``POST .../{id}/draft/rollback {"index": N}``: make an earlier skeleton or
  draft current again *as a new revision*. History is never rewritten: the
  rollback is one more event, folded by the session projection exactly like
  a revision (the skeleton one bumps ``framework_version``, pushes the
  replaced skeleton onto ``skeleton_history`` and clears
  ``generated_examples``).

A rollback checks the row it read and appends with that row's version as the
expected version, so a change landing between the check and the append
(a turn claiming the session, a PATCH) fails the append instead of slipping
in: with ``If-Match`` that is a 412, without it the command re-reads and
decides again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sessionstream.core.errors import (
    ConcurrencyConflict,
    PreconditionFailed,
    SessionBusy,
    ValidationFailed,
)
from sessionstream.core.vocabulary import EventType, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import Doc, NewEvent, RecordedEvent
from sessionstream.server.errors import parse
from sessionstream.server.handlers import (
    SESSIONS,
    if_match,
    request_id,
    session_response,
    user_id,
    uuid_param,
)
from sessionstream.server.keys import SERVICE, STORE
from sessionstream.server.schemas import DraftRollback, SkeletonRollback
from sessionstream.services.ownership import owned
from sessionstream.services.sessions import Service, actor

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
ROLLBACK_RETRIES = 10
_COUNT = re.compile(r"^[0-9]{1,18}$")

#: decides the event a rollback appends, from the current row; raises when it cannot
Decision = Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]


# pure decisions ----------------------------------------------------------------------
def event_json(event: RecordedEvent) -> dict[str, Any]:
    """One audit-log entry: what happened, who did it, when, and its hash."""
    return {
        "position": event.position,
        "stream_id": event.stream_id,
        "version": event.version,
        "type": event.type,
        "data": event.data,
        "actor": event.metadata.get("actor"),
        "recorded_at": event.recorded_at,
        "hash": event.hash,
        "event_id": event.event_id,
        "metadata": event.metadata,
    }


def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON true is not version 1


def skeleton_rollback(version: int) -> Decision:
    """Restore the newest ``skeleton_history`` entry with this framework_version.

    Rolling back to the current version is refused (400 "already current")
    rather than appended as a no-op revision: a revision that changes nothing
    would still bump ``framework_version`` and clear ``generated_examples``.
    """

    def decide(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if row["skeleton"] is not None and row["framework_version"] == version:
            raise ValidationFailed(
                f"framework_version {version} is already current; nothing to roll back"
            )
        history = row["skeleton_history"] if isinstance(row["skeleton_history"], list) else []
        for entry in reversed(history):
            if isinstance(entry, dict) and _is_int(entry.get("framework_version")):
                if entry["framework_version"] != version:
                    continue
                skeleton = entry.get("skeleton")
                if not isinstance(skeleton, dict):
                    raise ValidationFailed(
                        f"framework_version {version} in skeleton_history holds no skeleton"
                    )
                return EventType.SKELETON_ROLLED_BACK, {"to_version": version, "skeleton": skeleton}
        known = sorted(
            {
                e["framework_version"]
                for e in history
                if isinstance(e, dict) and _is_int(e.get("framework_version"))
            }
        )
        raise ValidationFailed(
            f"framework_version {version} is not in this session's skeleton_history",
            details={"available": known, "current": row["framework_version"]},
        )

    return decide


def draft_rollback(index: int) -> Decision:
    """Restore ``draft_history[index]`` (the previous draft goes onto the history)."""

    def decide(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        history = row["draft_history"] if isinstance(row["draft_history"], list) else []
        if index >= len(history):
            raise ValidationFailed(
                f"draft_history has {len(history)} entries; index {index} does not exist",
                details={"available": len(history)},
            )
        entry = history[index]
        subject = entry.get("draft_subject") if isinstance(entry, dict) else None
        body = entry.get("draft_body") if isinstance(entry, dict) else None
        if not isinstance(subject, str | None) or not isinstance(body, str | None):
            raise ValidationFailed(f"draft_history[{index}] holds no draft to restore")
        return EventType.DRAFT_ROLLED_BACK, {
            "index": index,
            "draft_subject": subject,
            "draft_body": body,
        }

    return decide


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not _COUNT.match(raw) or not low <= int(raw) <= high:
        raise ValidationFailed(f"{name} must be an integer from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


# commands and queries ----------------------------------------------------------------
class History:
    """The audit and undo commands; ownership through the session service."""

    def __init__(self, store: EventStore, service: Service) -> None:
        self.store = store
        self.service = service

    async def owned(self, user: str, session_id: str) -> Doc:
        """The session's document for its owner, deleted or not (auditors read history)."""
        return await owned(self.store, "session", session_id, user, deleted=True)

    async def events(
        self, user: str, session_id: str, after: int, limit: int
    ) -> tuple[list[RecordedEvent], int | None]:
        """A page of the session's events and the cursor of the next page (None: the end)."""
        await self.owned(user, session_id)
        page = await self.store.read_all(
            after, limit=limit + 1, keys=frozenset({session_stream(session_id)})
        )
        if len(page) > limit:
            page = page[:limit]
            return page, page[-1].position
        return page, None

    async def rollback(
        self,
        user: str,
        session_id: str,
        decide: Decision,
        *,
        expected: int | None,
        request_id: str | None,
    ) -> Doc:
        stream = session_stream(session_id)
        for _ in range(ROLLBACK_RETRIES):
            doc = await self.service.session(user, session_id)
            if expected is not None and expected != doc.version:
                raise PreconditionFailed(
                    f"session is at version {doc.version}, not {expected}: reload and retry"
                )
            row = doc.body["row"]
            if row["task_status"] is not None:
                raise SessionBusy(
                    f"Session is busy ({row['task_status']}); wait for task_status to "
                    "return to null, then retry"
                )
            kind, data = decide(row)
            try:
                await self.store.append(
                    stream,
                    [NewEvent(kind, data, actor(user, request_id))],
                    expected_version=doc.version,
                )
            except ConcurrencyConflict as exc:
                if expected is not None:
                    raise PreconditionFailed(
                        "the session changed meanwhile: reload and retry"
                    ) from exc
                continue  # someone else wrote first: decide again on the new row
            return await self.service.session(user, session_id)
        raise SessionBusy("the session kept changing during the rollback; retry")


# handlers -----------------------------------------------------------------------------
HISTORY = web.AppKey("history", History)


async def session_events(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    after = query_int(request, "after", 0, 0, 10**18 - 1)
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    events, cursor = await request.app[HISTORY].events(user_id(request), session_id, after, limit)
    return web.json_response({"events": [event_json(e) for e in events], "next": cursor})


async def rollback_skeleton(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    expected = if_match(request)
    body, _ = await parse(request, SkeletonRollback)
    doc = await request.app[HISTORY].rollback(
        user_id(request),
        session_id,
        skeleton_rollback(body.framework_version),
        expected=expected,
        request_id=request_id(request),
    )
    return session_response(doc)


async def rollback_draft(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    expected = if_match(request)
    body, _ = await parse(request, DraftRollback)
    doc = await request.app[HISTORY].rollback(
        user_id(request),
        session_id,
        draft_rollback(body.index),
        expected=expected,
        request_id=request_id(request),
    )
    return session_response(doc)


def install(app: web.Application) -> None:
    app[HISTORY] = History(app[STORE], app[SERVICE])
    app.router.add_get(SESSIONS + "/{id}/events", session_events)
    app.router.add_post(SESSIONS + "/{id}/skeleton/rollback", rollback_skeleton)
    app.router.add_post(SESSIONS + "/{id}/draft/rollback", rollback_draft)
