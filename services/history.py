"""History for auditors and undo: the session's events, time travel, and rollbacks.

- The events of a session: its stream and its runs' streams in log order,
  each with its hash, a page at a time. Owner only; a deleted session's
  history stays readable to its owner.
- Time travel: the session exactly as it was at a log position or a time.
- Rollbacks make an earlier skeleton or draft current again *as a new
  revision*. History is never rewritten: the rollback is one more event,
  folded by the session projection exactly like a revision (the skeleton one
  bumps ``framework_version``, pushes the replaced skeleton onto
  ``skeleton_history`` and clears ``generated_examples``).

A rollback is decided on the row it read and appended at that row's version
(``services/decide.py``): a change landing in between (a turn claiming the
session, a PATCH) fails the append instead of slipping in; with ``If-Match``
that is a 412, without it the command reads again and decides again. The
deciders are pure functions of the row, tested without a store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from sessionstream.core.errors import NotFound, SessionBusy, ValidationFailed
from sessionstream.core.readmodels import SessionRow, SessionState
from sessionstream.core.vocabulary import EventType, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import NewEvent, RecordedEvent
from sessionstream.projections.session import fold_session_events
from sessionstream.services.claims import require_idle
from sessionstream.services.decide import actor, decide_and_append
from sessionstream.services.ownership import Loaded, owned_session
from sessionstream.services.quota import Quota

ROLLBACK_ATTEMPTS: Final = 10
#: session events read per query while folding for ``as_of``
AS_OF_PAGE: Final = 5000

#: decides the event a rollback appends, from the current row; raises when it cannot
Rollback = Callable[[SessionRow], tuple[EventType, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class EventsPage:
    events: list[RecordedEvent]
    #: the cursor of the next page (``after=``); None at the end
    next: int | None


@dataclass(frozen=True, slots=True)
class AsOf:
    """The session row as it was at ``position``."""

    row: SessionRow
    position: int


# pure decisions ----------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON true is not version 1


def skeleton_rollback(version: int) -> Rollback:
    """Restore the newest ``skeleton_history`` entry with this framework_version.

    Rolling back to the current version is refused (400 "already current")
    rather than appended as a no-op revision: a revision that changes nothing
    would still bump ``framework_version`` and clear ``generated_examples``.
    """

    def decide(row: SessionRow) -> tuple[EventType, dict[str, Any]]:
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


def draft_rollback(index: int) -> Rollback:
    """Restore ``draft_history[index]`` (the previous draft goes onto the history)."""

    def decide(row: SessionRow) -> tuple[EventType, dict[str, Any]]:
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


def log_time(moment: datetime) -> str:
    """A time as the log records it (RFC 3339, UTC, milliseconds), to compare with its stamps."""
    try:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (OverflowError, ValueError) as exc:
        raise ValidationFailed("as_of is outside the representable time range") from exc


# commands and queries ----------------------------------------------------------------------
class History:
    """The audit and undo commands; the owner reads a deleted session's past too."""

    def __init__(self, store: EventStore, quota: Quota | None = None) -> None:
        self.store = store
        #: a rollback re-appends an old skeleton or draft, so it counts against the quota
        self.quota = quota or Quota(store, 0)

    async def events(self, user_id: str, session_id: str, after: int, limit: int) -> EventsPage:
        """A page of the session's events, its runs' included, in log order.

        At most ``limit`` events and the store's page byte budget (one larger
        event comes alone), their data left as stored text for the response to
        splice in. A page shorter than ``limit`` looks one event further only to
        say whether it is the last (``next`` null).
        """
        await owned_session(self.store, session_id, user_id, deleted=True)
        store, keys = self.store, frozenset({session_stream(session_id)})
        page: list[RecordedEvent] = list(
            await store.read_page(after, max_rows=limit + 1, max_bytes=store.page_bytes, keys=keys)
        )
        if len(page) > limit:
            page = page[:limit]
            return EventsPage(page, page[-1].position)
        if page and await store.read_page(page[-1].position, max_rows=1, max_bytes=0, keys=keys):
            return EventsPage(page, page[-1].position)  # cut by the byte budget
        return EventsPage(page, None)

    async def session_as_of(self, user_id: str, session_id: str, at: int | datetime) -> AsOf:
        """The session exactly as it was at a global position, or at a time (its last position).

        The owner may look back at a deleted session (auditors); the answer is
        ``NotFound`` where the session did not exist yet or was already deleted.
        At or past the last session event the current document is the answer;
        otherwise the newest snapshot at or before ``position`` plus the
        session events after it, so the cost is bounded by the snapshot
        interval, not by the history's length.
        """
        position = at if isinstance(at, int) else await self.store.position_at(log_time(at))
        doc = await owned_session(self.store, session_id, user_id, deleted=True)
        state: SessionState | None
        if position >= doc.position:
            state = doc.body
        else:
            state = await self._fold_until(session_stream(session_id), position)
        if state is None or state["deleted"]:
            raise NotFound(f"session {session_id} did not exist at position {position}")
        return AsOf(state["row"], position)

    async def _fold_until(self, stream: str, position: int) -> SessionState | None:
        snap = await self.store.latest_snapshot(stream, "session", max_position=position)
        state: SessionState | None = None
        after = 0
        if snap is not None:
            after, _, body = snap
            state = cast(SessionState, body)
        while True:
            events = await self.store.read_stream(
                stream, after, limit=AS_OF_PAGE, to_position=position
            )
            state = fold_session_events(state, events)
            if len(events) < AS_OF_PAGE:
                return state
            after = events[-1].version

    async def rollback_skeleton(
        self,
        user_id: str,
        session_id: str,
        framework_version: int,
        *,
        if_match: int | None = None,
        request_id: str | None = None,
    ) -> Loaded[SessionState]:
        return await self._rollback(
            user_id, session_id, skeleton_rollback(framework_version), if_match, request_id
        )

    async def rollback_draft(
        self,
        user_id: str,
        session_id: str,
        index: int,
        *,
        if_match: int | None = None,
        request_id: str | None = None,
    ) -> Loaded[SessionState]:
        return await self._rollback(
            user_id, session_id, draft_rollback(index), if_match, request_id
        )

    async def _rollback(
        self,
        user_id: str,
        session_id: str,
        rollback: Rollback,
        if_match: int | None,
        request_id: str | None,
    ) -> Loaded[SessionState]:
        def decide(session: Loaded[SessionState]) -> list[NewEvent]:
            row = session.body["row"]
            require_idle(row)  # a run would revise on top of what it did not see
            kind, data = rollback(row)
            return [NewEvent(kind, data, actor(user_id, request_id))]

        async with self.quota.room(user_id) as room:
            await decide_and_append(
                self.store,
                session_stream(session_id),
                lambda: owned_session(self.store, session_id, user_id),
                decide,
                if_match=if_match,
                attempts=ROLLBACK_ATTEMPTS,
                exhausted=lambda _conflict: SessionBusy(
                    "the session kept changing during the rollback; retry"
                ),
                room=room,
            )
        return await owned_session(self.store, session_id, user_id)
