"""The one ownership check, and the one place a document gets its type.

Every read, write and subscription reaches a session, run or campaign through
:func:`owned`, so "someone else's resource is a 404, never a 403" is decided
in one place: the message does not say whether the id exists.

The store hands out schema-agnostic documents; the services know which kind
they asked for, so the loaders below cast a document's body to its shape in
``core.readmodels`` once, here, and everything above works with typed state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar, cast

from sessionstream.core.errors import NotFound
from sessionstream.core.readmodels import Campaign, RunRow, SessionState
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import Doc

B = TypeVar("B")

#: where each kind of read model records its owner
_OWNER: Final[dict[str, Callable[[dict[str, Any]], Any]]] = {
    "session": lambda body: body["row"]["user_id"],
    "campaign": lambda body: body["user_id"],
    "run": lambda body: body["user_id"],
}


@dataclass(frozen=True, slots=True)
class Loaded(Generic[B]):
    """A document of a known kind: its body typed, its version for ETags and expected versions.

    The document itself stays at hand: what readers derive from it (an
    encoded response) is cached on it, once per version.
    """

    doc: Doc
    body: B

    @property
    def key(self) -> str:
        return self.doc.key

    @property
    def version(self) -> int:
        return self.doc.version

    @property
    def position(self) -> int:
        return self.doc.position


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


def session_of(doc: Doc) -> Loaded[SessionState]:
    return Loaded(doc, cast(SessionState, doc.body))


def campaign_of(doc: Doc) -> Loaded[Campaign]:
    return Loaded(doc, cast(Campaign, doc.body))


def run_of(doc: Doc) -> Loaded[RunRow]:
    return Loaded(doc, cast(RunRow, doc.body))


async def owned_session(
    store: EventStore, session_id: str, user_id: str, *, deleted: bool = False
) -> Loaded[SessionState]:
    return session_of(await owned(store, "session", session_id, user_id, deleted=deleted))


async def owned_campaign(store: EventStore, campaign_id: str, user_id: str) -> Loaded[Campaign]:
    return campaign_of(await owned(store, "campaign", campaign_id, user_id))


async def owned_run(store: EventStore, run_id: str, user_id: str) -> Loaded[RunRow]:
    return run_of(await owned(store, "run", run_id, user_id))
