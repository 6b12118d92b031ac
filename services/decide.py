"""How a command appends: read, decide, append at the version read, retry on a race.

Every command that depends on the current state reads a read model, decides
its events from it, and appends them with the version it read as the
expected version. A change landing between the read and the append (a turn
claiming the session, another PATCH) then fails the append instead of
slipping in, and the command reads again and decides again. That loop was
written four times (node positions, the run claim, rollbacks, ending a run
from elsewhere) and the If-Match rule twice (PATCH, rollbacks); it is
written once here, with the bound and the error each caller gives when the
races never stop.

Also here: whose act an event is (:func:`actor`) and the ids an
``Idempotency-Key`` makes repeatable (:func:`idem_uuid`), which every
command's events carry.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from sessionstream.core.errors import ConcurrencyConflict, PreconditionFailed, SessionStreamError
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import AppendRequest, AppendResult, NewEvent
from sessionstream.services.quota import Room

#: how often a command decides again when others keep writing first
ATTEMPTS: Final = 20
IDEMPOTENCY_NS: Final = uuid.UUID("6f1c0d2e-5b7a-4f43-9b52-8d7f4a1e2c90")


class Versioned(Protocol):
    """What a command decides on: a read model and the stream version it reflects."""

    @property
    def version(self) -> int: ...


V = TypeVar("V", bound=Versioned)


@dataclass(frozen=True, slots=True)
class Decided(Generic[V]):
    """The state a command decided on, and what its append did (None: nothing to append)."""

    state: V
    appended: AppendResult | None


def check_if_match(state: Versioned, if_match: int | None) -> None:
    """``If-Match`` names the version the client last read; any other is a 412."""
    if if_match is not None and if_match != state.version:
        raise PreconditionFailed(
            f"session is at version {state.version}, not {if_match}: reload and retry"
        )


async def decide_and_append(
    store: EventStore,
    stream: str,
    load: Callable[[], Awaitable[V]],
    decide: Callable[[V], Sequence[NewEvent]],
    *,
    also: Callable[[V], Sequence[AppendRequest]] | None = None,
    if_match: int | None = None,
    last_writer_wins: bool = False,
    attempts: int = ATTEMPTS,
    exhausted: Callable[[ConcurrencyConflict], SessionStreamError] | None = None,
    room: Room | None = None,
) -> Decided[V]:
    """Append what ``decide`` makes of the current state, at the version it was read.

    ``decide`` is pure and may raise to refuse (busy, not found, invalid); an
    empty decision appends nothing. ``also`` adds appends to other streams in
    the same transaction (a claim creates the run's stream). With
    ``if_match`` the client named the version it expects: a different one,
    or a race, is a 412 at once, never a retry. ``last_writer_wins`` appends
    without checking the version (a PATCH without If-Match). After
    ``attempts`` races the command gives up with ``exhausted(conflict)``, or
    the last conflict itself. Inside a quota ``room`` every append is
    checked against the user's storage quota first (``services/quota.py``).
    """
    conflict: ConcurrencyConflict | None = None
    for _ in range(attempts):
        state = await load()
        check_if_match(state, if_match)
        events = decide(state)
        if not events:
            return Decided(state, None)
        unchecked = last_writer_wins and if_match is None
        requests = [
            AppendRequest(stream, tuple(events), None if unchecked else state.version),
            *(also(state) if also is not None else ()),
        ]
        if room is not None:
            room.check(requests)
        try:
            results = await store.transact(requests)
        except ConcurrencyConflict as exc:
            if if_match is not None:
                raise PreconditionFailed("the session changed meanwhile: reload and retry") from exc
            conflict = exc
            continue  # someone else wrote first: decide again on what they wrote
        return Decided(state, results[0])
    assert conflict is not None, "attempts must be at least 1"
    if exhausted is None:
        raise conflict
    raise exhausted(conflict) from conflict


def actor(user_id: str, request_id: str | None = None) -> dict[str, Any]:
    """The metadata of an event a user's request appends: who, and which request."""
    meta: dict[str, Any] = {"actor": {"type": "user", "id": user_id}}
    if request_id:
        meta["request_id"] = request_id
    return meta


def idem_uuid(user_id: str, key: str | None, purpose: str) -> str | None:
    """A deterministic id for an ``Idempotency-Key``: a retry appends the same ids."""
    if key is None:
        return None
    return str(uuid.uuid5(IDEMPOTENCY_NS, f"{user_id}\x00{purpose}\x00{key}"))
