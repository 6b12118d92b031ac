"""One chat turn: the engine's stream of items becomes the run's events.

Streamed text becomes ``message.delta`` events as fast as the log takes them
(``services/coalesce.py``): a delta per token on an idle writer, larger ones
under load, never two of one run in the writer's queue. The engine is read on
while a delta commits, so neither waits for the other. Skeleton and draft
proposals are events of their own. The
durable results (the user's and the assistant's messages, a new skeleton
revision, a new draft) land on the session stream: the user's message with
``run.started``, the rest with the terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from sessionstream.core.readmodels import SessionRow, TurnOutput, TurnRunInput
from sessionstream.core.vocabulary import EventType, session_stream
from sessionstream.engines.base import (
    DEFAULT_VAR_NAMES,
    DraftUpdate,
    Message,
    ModelEngine,
    SkeletonUpdate,
    StreamItem,
    TextDelta,
    TurnInput,
    served_by,
)
from sessionstream.engines.provider import stalled
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import AppendRequest, NewEvent
from sessionstream.services.coalesce import Coalescer
from sessionstream.services.ownership import session_of
from sessionstream.services.runlog import (
    RunContext,
    RunStopped,
    append_run,
    commit,
    durably,
    finish,
)

#: how long a run that is ending waits for its delta in flight to commit, beyond the wait
#: for storage (a write is never cancelled: its append would still land, at a version the
#: run no longer knows)
SETTLE_S = 10.0


def turn_input(row: SessionRow, ask: TurnRunInput) -> TurnInput:
    """What the engine may read: the session as it was when the turn started, and the ask."""
    return TurnInput(
        message=ask["message"],
        history=tuple(
            Message(str(m.get("role", "")), str(m.get("content", "")))
            for m in (row["messages"] or [])
            if isinstance(m, dict)
        ),
        skeleton=row["skeleton"],
        framework_version=row["framework_version"] or 0,
        draft_subject=row["draft_subject"],
        draft_body=row["draft_body"],
        available_vars=tuple(ask.get("availableVarNames") or DEFAULT_VAR_NAMES),
        sample_leads=tuple(ask.get("sampleLeads") or ()),
        sequence_context=ask.get("sequenceContext"),
    )


async def run_turn(
    store: EventStore,
    engine: ModelEngine,
    ctx: RunContext,
    ask: TurnRunInput,
    *,
    coalesce_s: float,
    engine_timeout_s: float,
) -> None:
    doc = await durably(ctx, lambda: store.get_doc("session", ctx.claim.session_id))
    if doc is None:
        raise RunStopped
    message = str(ask["message"])
    inp = turn_input(session_of(doc).body["row"], ask)
    await commit(  # RunStopped: ended or taken over before it began
        store,
        ctx,
        [
            AppendRequest(
                ctx.stream,
                (ctx.event(EventType.RUN_STARTED, {"kind": "turn", **served_by(engine)}),),
                ctx.seq,
                ctx.fence,
            ),
            AppendRequest(
                session_stream(ctx.claim.session_id),
                (
                    ctx.session_event(
                        EventType.MESSAGE_APPENDED, {"role": "user", "content": message}
                    ),
                ),
            ),
        ],
    )
    ctx.seq += 1
    reading = _Reading(store, engine, ctx, inp, coalesce_s)
    await reading.run(engine_timeout_s)
    await _complete(
        store, ctx, "".join(reading.text), reading.skeleton, reading.draft, reading.version
    )


class _Reading:
    """One turn's reading of its engine, and its deltas' writing beside it.

    The engine is read on a task of its own, which handles each item as it comes: text
    joins the coalescer and a delta is started the moment one is due. A delta's commit
    starts the next (its done-callback), so the run loop itself sleeps until the turn
    ends, fails or stalls. Per token that is one step of the reading task; the loop
    before this woke for every token and made a task and an ``asyncio.wait`` for it,
    about a tenth of the server's CPU at 5,000 tokens/s.
    """

    def __init__(
        self, store: EventStore, engine: ModelEngine, ctx: RunContext, inp: TurnInput, floor: float
    ) -> None:
        self.store, self.engine, self.ctx, self.inp = store, engine, ctx, inp
        self.text: list[str] = []
        self.pending = Coalescer(floor)
        #: the delta in the writer's pipeline (at most one: see ``services/coalesce.py``)
        self.writing: asyncio.Future[None] | None = None
        #: the reading task waits here while its text is full, until the delta commits
        self.room: asyncio.Future[None] | None = None
        self.floor_timer: asyncio.TimerHandle | None = None
        self.watchdog: asyncio.TimerHandle | None = None
        #: a delta's failed append (``RunStopped``): the run's, if it got that far
        self.failure: BaseException | None = None
        self.skeleton: dict[str, Any] | None = None
        self.draft: DraftUpdate | None = None
        self.version = inp.framework_version
        #: since when the engine has been waited for; None while it is not read
        self.waiting_since: float | None = None
        self.loop = asyncio.get_running_loop()
        #: how the turn's reading ends: done, or the first failure (engine, delta, stall)
        self.outcome: asyncio.Future[None] = self.loop.create_future()

    async def run(self, engine_timeout_s: float) -> None:
        stream = self.engine.turn(self.inp).__aiter__()
        reader = asyncio.ensure_future(self._read(stream))
        reader.add_done_callback(self._read_ended)
        self.watchdog = self.loop.call_later(engine_timeout_s, self._watch, engine_timeout_s)
        try:
            await self.outcome
        finally:
            self.watchdog.cancel()
            if self.floor_timer is not None:
                self.floor_timer.cancel()
            if not reader.done():
                # cancelling the engine's __anext__ ends its generator for good: the
                # turn has ended (failed, stalled, cancelled), so nothing more is read
                reader.cancel()
                await asyncio.wait({reader}, timeout=SETTLE_S)  # an engine that ignores it
            if self.writing is not None:
                # let the delta being written settle, so whatever ends the run appends at
                # the stream's true version; its outcome is the run's only if it got here
                writing = self.writing
                await asyncio.wait({writing}, timeout=SETTLE_S + self.ctx.storage_wait_s)
                if writing.done() and not writing.cancelled():
                    writing.exception()
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        await self.flush()

    # the reading task ----------------------------------------------------------------------
    async def _read(self, stream: AsyncIterator[StreamItem]) -> None:
        clock, pending, text = time.monotonic, self.pending, self.text
        while True:
            self.waiting_since = clock()
            try:
                item = await stream.__anext__()
            except StopAsyncIteration:
                self.waiting_since = None
                return
            self.waiting_since = None
            if isinstance(item, TextDelta):
                text.append(item.text)
                pending.add(item.text)
                self._write_if_due()
                while pending.full and self.writing is not None:
                    # read no more until the delta in flight commits (the engine waits)
                    self.room = self.loop.create_future()
                    await self.room
            elif isinstance(item, SkeletonUpdate):
                await self.flush()
                self.skeleton = item.skeleton
                self.version += 1
                data = {"skeleton": self.skeleton, "framework_version": self.version}
                await append_run(
                    self.store, self.ctx, self.ctx.event(EventType.SKELETON_UPDATED, data)
                )
            elif isinstance(item, DraftUpdate):
                await self.flush()
                self.draft = item
                data = {"draft_subject": item.subject, "draft_body": item.body}
                await append_run(
                    self.store, self.ctx, self.ctx.event(EventType.DRAFT_UPDATED, data)
                )

    def _read_ended(self, reader: asyncio.Future[None]) -> None:
        if self.outcome.done():
            return
        if reader.cancelled():
            self.outcome.cancel()
        elif (exc := reader.exception()) is not None:
            self.outcome.set_exception(exc)
        else:
            self.outcome.set_result(None)

    def _watch(self, timeout_s: float) -> None:
        """The engine sent nothing for ``timeout_s`` while it was read: the turn stalls.
        Checked once per timeout, not per token (the reading task only notes the time)."""
        if self.outcome.done():
            return
        now, since = time.monotonic(), self.waiting_since
        if since is not None and now - since >= timeout_s:
            self.outcome.set_exception(stalled(self.engine, timeout_s))
            return
        # not read meanwhile (text full, a proposal being written): counts from now
        again = timeout_s if since is None else since + timeout_s - now
        self.watchdog = self.loop.call_later(again, self._watch, timeout_s)

    # the deltas ---------------------------------------------------------------------------
    def _write_if_due(self) -> None:
        now = time.monotonic()
        if self.pending.due(now, self.writing is not None):
            chunk = self.pending.take(now)
            event = self.ctx.event(EventType.MESSAGE_DELTA, {"text": chunk})
            self.writing = asyncio.ensure_future(append_run(self.store, self.ctx, event))
            self.writing.add_done_callback(self._written)
        elif self.floor_timer is None:
            wake = self.pending.wake_at(self.writing is not None)
            if wake is not None:
                self.floor_timer = self.loop.call_later(max(0.0, wake - now), self._floor_passed)

    def _floor_passed(self) -> None:
        self.floor_timer = None
        if not self.outcome.done():
            self._write_if_due()

    def _written(self, done: asyncio.Future[None]) -> None:
        """A delta committed: the text gathered meanwhile is due at once (a failure,
        ``RunStopped``, is the turn's)."""
        if self.writing is done:
            self.writing = None
        if self.room is not None and not self.room.done():
            self.room.set_result(None)
        failure = None if done.cancelled() else done.exception()
        if failure is not None:
            self.failure = self.failure or failure
            if not self.outcome.done():
                self.outcome.set_exception(failure)
            return
        if not self.outcome.done():
            self._write_if_due()

    async def flush(self) -> None:
        """Everything streamed so far written, in order, before what comes next."""
        while True:
            writing = self.writing
            if writing is not None:
                await asyncio.wait({writing})  # a cancel of the run never cancels the write
            if self.failure is not None:
                raise self.failure  # a delta that failed (``RunStopped``): the run's
            if writing is not None:
                continue
            if not self.pending:
                return
            chunk = self.pending.take(time.monotonic())
            event = self.ctx.event(EventType.MESSAGE_DELTA, {"text": chunk})
            await append_run(self.store, self.ctx, event)


async def _complete(
    store: EventStore,
    ctx: RunContext,
    reply: str,
    skeleton: dict[str, Any] | None,
    draft: DraftUpdate | None,
    version: int,
) -> None:
    """The turn's end: the whole reply on both streams, the revisions on the session."""
    run_id = ctx.claim.run_id
    session_events: list[NewEvent] = [
        ctx.session_event(EventType.MESSAGE_APPENDED, {"role": "assistant", "content": reply})
    ]
    if skeleton is not None:
        session_events.append(
            ctx.session_event(EventType.SKELETON_REVISED, {"skeleton": skeleton, "run_id": run_id})
        )
    if draft is not None:
        session_events.append(
            ctx.session_event(
                EventType.DRAFT_REVISED,
                {"draft_subject": draft.subject, "draft_body": draft.body, "run_id": run_id},
            )
        )
    output: TurnOutput = {
        "message": reply,
        "skeleton_updated": skeleton is not None,
        "framework_version": version,
        "draft_updated": draft is not None,
    }
    run_events = [
        ctx.event(
            EventType.MESSAGE_COMPLETED, {"message": {"role": "assistant", "content": reply}}
        ),
        ctx.event(EventType.RUN_COMPLETED, {"output": output}),
    ]
    await finish(store, ctx, run_events, session_events)
