"""The one ownership check: a resource of another user does not exist for the caller.

Every read, write and subscription reaches a session, run or campaign through
:func:`owned`, so "someone else's resource is a 404, never a 403" is decided
in one place: the message does not say whether the id exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from sessionstream.core.errors import NotFound
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import Doc

#: where each kind of read model records its owner
_OWNER: Final[dict[str, Callable[[dict[str, Any]], Any]]] = {
    "session": lambda body: body["row"]["user_id"],
    "campaign": lambda body: body["user_id"],
    "run": lambda body: body["user_id"],
}


async def owned(
    store: EventStore, kind: str, key: str, user_id: str, *, deleted: bool = False
) -> Doc:
    """``kind``'s document ``key`` when ``user_id`` owns it; a deleted one only with ``deleted``.

    Auditors may read the history of a deleted session, so the caller says
    whether a deleted resource still counts as found.
    """
    doc = await store.get_doc(kind, key)
    if (
        doc is None
        or _OWNER[kind](doc.body) != user_id
        or (not deleted and doc.body.get("deleted", False))
    ):
        raise NotFound(f"{kind} {key[:64]} not found")
    return doc
