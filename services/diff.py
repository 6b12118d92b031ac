"""What changed in a session between two of its versions, for the history view.

The console used to diff two rows itself; the server does it once here so
every client reads the same answer: the skeleton's fields that differ, the
draft's subject and body as unified diffs (``difflib``, the format ``git``
and reviewers read), and the messages added in between.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from sessionstream.core.errors import NotFound, ValidationFailed
from sessionstream.core.readmodels import JsonObject, SessionRow
from sessionstream.core.vocabulary import session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.services.history import History
from sessionstream.services.ownership import owned_session


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str
    before: Any
    after: Any


@dataclass(frozen=True, slots=True)
class SessionDiff:
    from_version: int
    to_version: int
    skeleton: tuple[FieldChange, ...]
    subject: str
    body: str
    messages_added: tuple[JsonObject, ...]


def unified(before: str | None, after: str | None, name: str) -> str:
    lines = difflib.unified_diff(
        (before or "").splitlines(keepends=True),
        (after or "").splitlines(keepends=True),
        f"a/{name}",
        f"b/{name}",
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def skeleton_changes(before: JsonObject | None, after: JsonObject | None) -> list[FieldChange]:
    old, new = before or {}, after or {}
    return [
        FieldChange(name, old.get(name), new.get(name))
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    ]


def diff_rows(old: SessionRow, new: SessionRow, from_version: int, to_version: int) -> SessionDiff:
    """Pure: the difference of two rows of one session."""
    before, after = old["messages"] or [], new["messages"] or []
    kept = len(before) if after[: len(before)] == before else 0
    return SessionDiff(
        from_version,
        to_version,
        tuple(skeleton_changes(old["skeleton"], new["skeleton"])),
        unified(old["draft_subject"], new["draft_subject"], "subject"),
        unified(old["draft_body"], new["draft_body"], "body"),
        tuple(after[kept:]),
    )


async def session_diff(
    store: EventStore, user_id: str, session_id: str, from_version: int, to_version: int
) -> SessionDiff:
    """The difference between two versions of the session's stream (owner only)."""
    if not 0 < from_version <= to_version:
        raise ValidationFailed("from and to must be versions with 0 < from <= to")
    await owned_session(store, session_id, user_id, deleted=True)
    rows: list[SessionRow] = []
    history = History(store)
    for version in (from_version, to_version):
        position = await store.position_of(session_stream(session_id), version)
        if position is None:
            raise NotFound(f"session {session_id} has no version {version}")
        rows.append((await history.session_as_of(user_id, session_id, position)).row)
    return diff_rows(rows[0], rows[1], from_version, to_version)
