"""The session projection: the documented session row, folded from its stream.

State is :class:`~sessionstream.core.readmodels.SessionState`: the documented
row, the run holding the claim, and the tombstone. ``skeleton_history`` and
``draft_history`` are derived from skeleton and draft events, so rollback is
a fold over history rather than a stored copy that can drift. History
entries keep the version they had:
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

import copy
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, cast, get_args

from sessionstream.core.readmodels import JsonObject, SessionRow, SessionState
from sessionstream.core.vocabulary import SESSION_PREFIX, EventType
from sessionstream.eventstore.model import DocIndex, RecordedEvent
from sessionstream.projections.streams import PerStream

PREFIX = SESSION_PREFIX

#: the row fields a PATCH may write; the rest are the server's
Patchable = Literal[
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
]
PATCHABLE: Final = frozenset[str](get_args(Patchable))
#: the row's lists a fold extends in place (examples are always replaced by a new list)
ListField = Literal["messages", "skeleton_history", "draft_history"]


def empty_row(data: Mapping[str, Any], at: str) -> SessionRow:
    return {
        "id": data["id"],
        "user_id": data["user_id"],
        "campaign_id": data["campaign_id"],
        "node_id": data["node_id"],
        "title": None,
        "messages": None,
        "draft_subject": None,
        "draft_body": None,
        "skeleton": None,
        "skeleton_history": None,
        "draft_history": None,
        "framework_version": None,
        "generated_examples": None,
        "task_status": None,
        "created_at": at,
        "updated_at": at,
    }


#: the event types a session stream can start with
FIRST = frozenset({EventType.SESSION_CREATED, EventType.SESSION_FORKED})

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


def _own(row: SessionRow, name: ListField, owned: set[str]) -> list[JsonObject]:
    """The row's list ``name``, copied the first time this fold changes it.

    ``owned`` names the lists this fold has already copied: those it may
    append to in place. A list that came in with the state, or from an
    event's data, is never changed.
    """
    if name not in owned:
        row[name] = list(row[name] or [])
        owned.add(name)
    return cast("list[JsonObject]", row[name])  # a list: this fold copied it


def _revise_skeleton(row: SessionRow, skeleton: Any, at: str, owned: set[str]) -> None:
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


def _revise_draft(row: SessionRow, subject: Any, body: Any, at: str, owned: set[str]) -> None:
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


def _step(state: SessionState, owned: set[str], event: RecordedEvent) -> None:
    """Fold one known event into a state this fold owns, in place.

    ``state`` and its row are private to the caller; lists are copied before
    their first change (see :func:`_own`), so nothing shared is touched.
    """
    kind, data, at = event.type, event.data, event.recorded_at
    row = state["row"]
    if kind == EventType.SESSION_PATCHED:
        fields: JsonObject = data.get("fields", {})
        for name, value in fields.items():
            if name in PATCHABLE:
                row[cast(Patchable, name)] = value
                owned.discard(name)  # the event's own object: never change it
        if "skeleton" in fields and "generated_examples" not in fields:
            row["generated_examples"] = None
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
    elif kind == EventType.RUN_RELEASED:
        if state["active_run"] == data["run_id"]:
            row["task_status"] = None
            state["active_run"] = None
    elif kind == EventType.SESSION_DELETED:
        state["deleted"] = True
        state["active_run"] = None
    row["updated_at"] = at


def _private(state: SessionState) -> SessionState:
    return {
        "row": state["row"].copy(),
        "active_run": state["active_run"],
        "deleted": state["deleted"],
    }


def forked_row(data: Mapping[str, Any], at: str) -> SessionRow:
    """A fork's row: the source's content as of the fork, under the fork's own identity.

    The copied content comes in the event (``data["row"]``), so the fork's
    fold needs no other stream; it starts idle whatever the source was doing.
    """
    row = empty_row(data, at)
    copied = data["row"]
    for name in COPIED:
        row[name] = copy.deepcopy(copied.get(name))  # type: ignore[literal-required]
    row["forked_from"] = {
        "session_id": data["forked_from"]["session_id"],
        "position": data["forked_from"]["position"],
    }
    return row


#: what a fork copies from its source's row (identity, status and times are its own)
COPIED: tuple[str, ...] = (
    "title",
    "messages",
    "draft_subject",
    "draft_body",
    "skeleton",
    "skeleton_history",
    "draft_history",
    "framework_version",
    "generated_examples",
)


def _first(event: RecordedEvent) -> SessionState:
    if event.type == EventType.SESSION_FORKED:
        row = forked_row(event.data, event.recorded_at)
    else:
        row = empty_row(event.data, event.recorded_at)
    return {"row": row, "active_run": None, "deleted": False}


def apply_session(state: SessionState | None, event: RecordedEvent) -> SessionState | None:
    """Fold one session-stream event; returns a new state, never mutates ``state``."""
    if event.type in FIRST:
        return _first(event)
    if state is None:
        return None
    if event.type not in KNOWN:
        return state  # an event this projection does not know changes nothing
    new = _private(state)
    _step(new, set(), event)
    return new


def fold_session_events(
    state: SessionState | None, events: Iterable[RecordedEvent]
) -> SessionState | None:
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
        if event.type in FIRST:
            current = _first(event)
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


class SessionProjection(PerStream[SessionState]):
    prefix = PREFIX
    kind = "session"
    version = 1
    snapshots = True  # time travel (as_of) folds from the newest snapshot

    def evolve(self, state: SessionState | None, event: RecordedEvent) -> SessionState | None:
        return apply_session(state, event)

    def columns(self, state: SessionState) -> DocIndex:
        row = state["row"]
        return DocIndex(
            owner=row["user_id"],
            parent=row["campaign_id"],
            created_at=row["created_at"],
            active=state["active_run"] is not None,
            deleted=state["deleted"],
        )
