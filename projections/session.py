"""The session projection: the documented session row, folded from its stream.

State is ``{"row": <documented row>, "active_run": id|None, "deleted": bool}``.
``skeleton_history`` and ``draft_history`` are derived from skeleton and draft
events, so rollback is a fold over history rather than a stored copy that can
drift. History entries keep the version they had:
``{"framework_version", "skeleton", "replaced_at"}`` and
``{"draft_subject", "draft_body", "replaced_at"}``.

Session stream event types (data):
- ``session.created``   {id, user_id, campaign_id, node_id}
- ``session.patched``   {fields: {...}} (documented PATCH keys only)
- ``run.claimed``       {run_id, kind, task_status}
- ``message.appended``  {role, content}
- ``skeleton.revised``  {skeleton, run_id?}
- ``draft.revised``     {draft_subject, draft_body, run_id?}
- ``examples.generated`` {examples, replace}
- ``run.released``      {run_id, outcome}
- ``skeleton.rolled_back`` {to_version, skeleton}
- ``draft.rolled_back`` {index, draft_subject, draft_body}
- ``session.deleted``   {}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sessionstream.core.vocabulary import SESSION_PREFIX, EventType
from sessionstream.eventstore.model import DocIndex, RecordedEvent
from sessionstream.projections.streams import PerStream

PREFIX = SESSION_PREFIX

ROW_FIELDS = (
    "id",
    "user_id",
    "campaign_id",
    "node_id",
    "title",
    "messages",
    "draft_subject",
    "draft_body",
    "skeleton",
    "skeleton_history",
    "draft_history",
    "framework_version",
    "generated_examples",
    "task_status",
    "created_at",
    "updated_at",
)

PATCHABLE = frozenset(
    {
        "messages",
        "title",
        "draft_subject",
        "draft_body",
        "skeleton",
        "skeleton_history",
        "draft_history",
        "framework_version",
        "generated_examples",
        "task_status",
    }
)


def empty_row(data: dict[str, Any], at: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
    row.update(
        id=data["id"],
        user_id=data["user_id"],
        campaign_id=data["campaign_id"],
        node_id=data["node_id"],
        created_at=at,
        updated_at=at,
    )
    return row


#: event types this projection folds; any other leaves the state as it is
KNOWN = frozenset(
    {
        EventType.SESSION_PATCHED,
        EventType.RUN_CLAIMED,
        EventType.MESSAGE_APPENDED,
        EventType.SKELETON_REVISED,
        EventType.SKELETON_ROLLED_BACK,
        EventType.DRAFT_REVISED,
        EventType.DRAFT_ROLLED_BACK,
        EventType.EXAMPLES_GENERATED,
        EventType.RUN_RELEASED,
        EventType.SESSION_DELETED,
    }
)


def _own(row: dict[str, Any], name: str, owned: set[str]) -> list[Any]:
    """The row's list ``name``, copied the first time this fold changes it.

    ``owned`` names the lists this fold has already copied: those it may
    append to in place. A list that came in with the state, or from an
    event's data, is never changed.
    """
    if name not in owned:
        row[name] = list(row[name] or [])
        owned.add(name)
    value: list[Any] = row[name]
    return value


def _revise_skeleton(row: dict[str, Any], skeleton: Any, at: str, owned: set[str]) -> None:
    if row["skeleton"] is not None:
        _own(row, "skeleton_history", owned).append(
            {
                "framework_version": row["framework_version"] or 0,
                "skeleton": row["skeleton"],
                "replaced_at": at,
            }
        )
    row["skeleton"] = skeleton
    row["framework_version"] = (row["framework_version"] or 0) + 1
    row["generated_examples"] = None
    owned.discard("generated_examples")


def _revise_draft(row: dict[str, Any], subject: Any, body: Any, at: str, owned: set[str]) -> None:
    if row["draft_subject"] is not None or row["draft_body"] is not None:
        _own(row, "draft_history", owned).append(
            {
                "draft_subject": row["draft_subject"],
                "draft_body": row["draft_body"],
                "replaced_at": at,
            }
        )
    row["draft_subject"] = subject
    row["draft_body"] = body


def _step(state: dict[str, Any], owned: set[str], event: RecordedEvent) -> None:
    """Fold one known event into a state this fold owns, in place.

    ``state`` and its row are private to the caller; lists are copied before
    their first change (see :func:`_own`), so nothing shared is touched.
    """
    kind, data, at = event.type, event.data, event.recorded_at
    row = state["row"]
    if kind == EventType.SESSION_PATCHED:
        fields = data.get("fields", {})
        for name, value in fields.items():
            if name in PATCHABLE:
                row[name] = value
                owned.discard(name)  # the event's own object: never change it
        if "skeleton" in fields and "generated_examples" not in fields:
            row["generated_examples"] = None
            owned.discard("generated_examples")
        if "task_status" in fields and fields["task_status"] is None:
            state["active_run"] = None
    elif kind == EventType.RUN_CLAIMED:
        row["task_status"] = data["task_status"]
        state["active_run"] = data["run_id"]
    elif kind == EventType.MESSAGE_APPENDED:
        _own(row, "messages", owned).append({"role": data["role"], "content": data["content"]})
    elif kind in (EventType.SKELETON_REVISED, EventType.SKELETON_ROLLED_BACK):
        _revise_skeleton(row, data["skeleton"], at, owned)
    elif kind in (EventType.DRAFT_REVISED, EventType.DRAFT_ROLLED_BACK):
        _revise_draft(row, data["draft_subject"], data["draft_body"], at, owned)
    elif kind == EventType.EXAMPLES_GENERATED:
        examples = list(data["examples"])
        if not data.get("replace", True):
            examples = list(row["generated_examples"] or []) + examples
        row["generated_examples"] = examples
        owned.add("generated_examples")
    elif kind == EventType.RUN_RELEASED:
        if state["active_run"] == data["run_id"]:
            row["task_status"] = None
            state["active_run"] = None
    elif kind == EventType.SESSION_DELETED:
        state["deleted"] = True
        state["active_run"] = None
    row["updated_at"] = at


def _private(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "row": dict(state["row"]),
        "active_run": state["active_run"],
        "deleted": state["deleted"],
    }


def apply_session(state: dict[str, Any] | None, event: RecordedEvent) -> dict[str, Any] | None:
    """Fold one session-stream event; returns a new state, never mutates ``state``."""
    if event.type == EventType.SESSION_CREATED:
        return {
            "row": empty_row(event.data, event.recorded_at),
            "active_run": None,
            "deleted": False,
        }
    if state is None:
        return None
    if event.type not in KNOWN:
        return state  # an event this projection does not know changes nothing
    new = _private(state)
    _step(new, set(), event)
    return new


def fold_session_events(
    state: dict[str, Any] | None, events: Iterable[RecordedEvent]
) -> dict[str, Any] | None:
    """Fold many events of one session stream at once; equal to reducing
    :func:`apply_session` over them, and as pure (``state`` is not changed).

    Applying events one by one must copy every list an event extends (a fold
    may not change the state it was given), which makes a long history
    quadratic: 40,000 messages cost 40,000 growing copies. Here each list is
    copied at most once per fold and then extended in place, so folding is
    linear in the number of events (rebuild-sized folds, time travel).
    """
    current = state
    owned: set[str] = set()
    mine = False  # whether ``current`` is this fold's private copy
    for event in events:
        if event.type == EventType.SESSION_CREATED:
            current = apply_session(None, event)
            owned = set()
            mine = True
            continue
        if current is None or event.type not in KNOWN:
            continue
        if not mine:
            current = _private(current)
            owned = set()
            mine = True
        _step(current, owned, event)
    return current


class SessionProjection(PerStream):
    prefix = PREFIX
    kind = "session"
    version = 1
    snapshots = True  # time travel (as_of) folds from the newest snapshot

    def apply(self, state: dict[str, Any] | None, event: RecordedEvent) -> dict[str, Any] | None:
        return apply_session(state, event)

    def fold(
        self, state: dict[str, Any] | None, events: Iterable[RecordedEvent]
    ) -> dict[str, Any] | None:
        """Many events of one session at once (linear; see :func:`fold_session_events`)."""
        return fold_session_events(state, (e for e in events if self.key(e) is not None))

    def index(self, state: dict[str, Any]) -> DocIndex:
        row = state["row"]
        return DocIndex(
            owner=row["user_id"],
            parent=row["campaign_id"],
            created_at=row["created_at"],
            active=state["active_run"] is not None,
            deleted=state["deleted"],
        )
