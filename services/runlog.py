"""How a run writes: its own stream at an exact ``seq``, and one ending with its results.

The run task is the only writer of its run stream: every write carries the
epoch of the run's lease it took (``fence``, ``eventstore/leases.py``) and
an expected version. Whoever else ends the run (a cancel on another node,
recovery of an orphan) takes the lease first, which moves the epoch, so the
task's next write is refused (``LeaseLost``) and it stops
(:class:`RunStopped`) instead of writing past the end; the expected version
is the second guard under it. The terminal event,
the durable results on the session stream and the release of the session's
claim are one transaction, so a run is never over while its session stays
busy, nor the other way round.

A storage blip does not fail a run. Each write of a run that storage
refuses (``StorageUnavailable``: a database failing over, a lost
connection) is tried again, the same request with the same event ids, until
storage has been failing for ``storage_wait_s`` in a row (:func:`durably`).
A retry of a write whose commit did land, only its acknowledgement lost, is
an idempotent no-op (the ids are in the log), so nothing is written twice.
Past the bound the run fails with the storage error as its reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sessionstream.core.errors import ConcurrencyConflict, LeaseLost, NotFound, StorageUnavailable
from sessionstream.core.ids import Uuid7Sequence
from sessionstream.core.readmodels import RunRow
from sessionstream.core.vocabulary import EventType, run_stream, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import AppendRequest, AppendResult, Fence, NewEvent
from sessionstream.services.claims import Claim
from sessionstream.services.decide import decide_and_append
from sessionstream.services.ownership import Loaded, run_of

#: the statuses of a run that has not ended
ACTIVE = ("queued", "running")
#: who ends a run that its own task does not (recovery of a dead node's run)
SYSTEM = {"type": "system", "id": "recovery"}
#: the longest pause between two tries of a write storage refused
RETRY_MAX_S = 0.5

T = TypeVar("T")


class RunStopped(Exception):
    """Someone else ended this run (cancel elsewhere, recovery): stop quietly."""


@dataclass(slots=True)
class RunContext:
    """A run being written: its claim and the ``seq`` its stream is at."""

    claim: Claim
    seq: int = 1  # run.created is seq 1
    #: the run lease's epoch this context writes under (None: a store without leases)
    fence: Fence | None = None
    #: the ids of the run stream's events: one sequence per execution of the run
    ids: Uuid7Sequence = field(default_factory=Uuid7Sequence, repr=False, compare=False)
    #: how long the run's writes wait for storage to come back before the run fails
    storage_wait_s: float = 0.0
    #: who writes: the run itself, unless someone else ends it (``SYSTEM``)
    actor: dict[str, str] | None = None
    #: since when storage has refused this run's writes (monotonic); None: it answers
    failing_since: float | None = field(default=None, compare=False)

    @property
    def stream(self) -> str:
        return run_stream(self.claim.run_id)

    def meta(self) -> dict[str, Any]:
        return {
            "actor": self.actor or {"type": "run", "id": self.claim.run_id},
            "session_id": self.claim.session_id,
        }

    def event(self, type_: str, data: dict[str, Any]) -> NewEvent:
        """An event of the run stream, delivered to the session's subscribers too."""
        return NewEvent(
            type_,
            data,
            self.meta(),
            correlation_id=session_stream(self.claim.session_id),
            event_id=self.ids.next(),
        )

    def session_event(self, type_: str, data: dict[str, Any]) -> NewEvent:
        return NewEvent(type_, data, self.meta())

    def release(self, outcome: str, session_events: Sequence[NewEvent] = ()) -> AppendRequest:
        """The run's durable results and the release of its claim, on the session stream."""
        released = self.session_event(
            EventType.RUN_RELEASED, {"run_id": self.claim.run_id, "outcome": outcome}
        )
        return AppendRequest(
            session_stream(self.claim.session_id),
            (*session_events, released),
            fence=self.fence,
        )


async def durably(ctx: RunContext, attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()``, tried again while storage refuses it, until it has refused this run
    for ``ctx.storage_wait_s`` in a row; then its ``StorageUnavailable`` is raised."""
    delay = 0.05
    while True:
        try:
            result = await attempt()
        except StorageUnavailable:
            now = time.monotonic()
            if ctx.failing_since is None:
                ctx.failing_since = now
            left = ctx.failing_since + ctx.storage_wait_s - now
            if left <= 0:
                raise
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, RETRY_MAX_S)
            continue
        ctx.failing_since = None
        return result


async def commit(
    store: EventStore, ctx: RunContext, requests: Sequence[AppendRequest]
) -> list[AppendResult]:
    """The run's requests in one transaction, through a storage blip (:func:`durably`);
    ``RunStopped`` when someone else ended the run or took its lease."""
    try:
        return await durably(ctx, lambda: store.transact(requests))
    except (ConcurrencyConflict, LeaseLost) as exc:
        raise RunStopped from exc


async def append_run(store: EventStore, ctx: RunContext, *events: NewEvent) -> None:
    [result] = await commit(store, ctx, [AppendRequest(ctx.stream, events, ctx.seq, ctx.fence)])
    ctx.seq = result.version


def ending(
    ctx: RunContext, run_events: Sequence[NewEvent], session_events: Sequence[NewEvent] = ()
) -> list[AppendRequest]:
    """The terminal events and durable results, to commit at once (and, unchanged, again)."""
    return [
        AppendRequest(ctx.stream, tuple(run_events), ctx.seq, ctx.fence),
        ctx.release(run_events[-1].type, session_events),
    ]


async def finish(
    store: EventStore,
    ctx: RunContext,
    run_events: Sequence[NewEvent],
    session_events: Sequence[NewEvent] = (),
) -> None:
    """Terminal event and durable results in one transaction."""
    await commit(store, ctx, ending(ctx, run_events, session_events))


async def end_run(
    store: EventStore,
    run_id: str,
    type_: str,
    data: dict[str, Any],
    fence: Fence | None = None,
    actor: dict[str, str] | None = None,
) -> bool:
    """End a run this task is not executing (orphaned, on a dead node, canceled), under
    the lease epoch the caller took (``fence``); False when it has already ended (or
    never existed), or another node took the lease since."""

    async def load() -> Loaded[RunRow]:
        doc = await store.get_doc("run", run_id)
        if doc is None:
            raise NotFound(f"run {run_id} not found")
        return run_of(doc)

    def context(run: Loaded[RunRow]) -> RunContext:
        row = run.body
        claim = Claim(run_id, row["session_id"], row["user_id"], row["kind"], False)
        return RunContext(claim, seq=run.version, fence=fence, actor=actor)

    def decide(run: Loaded[RunRow]) -> list[NewEvent]:
        if run.body["status"] not in ACTIVE:
            return []
        return [context(run).event(type_, data)]

    def release(run: Loaded[RunRow]) -> list[AppendRequest]:
        return [context(run).release(type_)]

    try:
        decided = await decide_and_append(store, run_stream(run_id), load, decide, also=release)
    except (NotFound, ConcurrencyConflict, LeaseLost):
        return False  # gone, ended by others every time we looked, or taken over
    return decided.appended is not None
