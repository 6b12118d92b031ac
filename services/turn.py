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
from typing import Any

from sessionstream.core.readmodels import SessionRow, TurnOutput, TurnRunInput
from sessionstream.core.vocabulary import EventType, session_stream
from sessionstream.engines.base import (
    DEFAULT_VAR_NAMES,
    DraftUpdate,
    Message,
    ModelEngine,
    SkeletonUpdate,
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
    text: list[str] = []
    pending = Coalescer(coalesce_s)
    #: the delta in the writer's pipeline (at most one: see ``services/coalesce.py``)
    writing: asyncio.Future[None] | None = None
    skeleton: dict[str, Any] | None = None
    draft: DraftUpdate | None = None
    version = inp.framework_version

    def write_delta() -> None:
        nonlocal writing
        chunk = pending.take(time.monotonic())
        event = ctx.event(EventType.MESSAGE_DELTA, {"text": chunk})
        writing = asyncio.ensure_future(append_run(store, ctx, event))

    async def settle() -> None:
        """Wait for the delta being written; its failure (``RunStopped``) is the run's."""
        nonlocal writing
        if writing is not None:
            await asyncio.wait({writing})  # a cancel of the run never cancels the write
            done, writing = writing, None
            done.result()

    async def flush() -> None:
        """Everything streamed so far written, in order, before what comes next."""
        await settle()
        if pending:
            chunk = pending.take(time.monotonic())
            await append_run(store, ctx, ctx.event(EventType.MESSAGE_DELTA, {"text": chunk}))

    stream = engine.turn(inp).__aiter__()
    # The engine's next item is awaited as its own task: a timeout (to detect a hung
    # engine) or a delta's commit must never cancel it, since cancelling an async
    # generator's __anext__ ends the generator for good.
    next_item: asyncio.Future[Any] | None = None
    idle_deadline = 0.0
    try:
        while True:
            if next_item is None and not pending.full:
                next_item = asyncio.ensure_future(stream.__anext__())
                idle_deadline = time.monotonic() + engine_timeout_s
            waits = {f for f in (next_item, writing) if f is not None}
            # the engine is not waited for while it is not read (text is full)
            deadline = idle_deadline if next_item is not None else float("inf")
            wake = pending.wake_at(writing is not None)
            if wake is not None:
                deadline = min(deadline, wake)
            if waits:
                timeout = (
                    None if deadline == float("inf") else max(0.0, deadline - time.monotonic())
                )
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if writing is not None and writing.done():
                await settle()
            if next_item is not None and next_item.done():
                finished, next_item = next_item, None
                try:
                    item = finished.result()
                except StopAsyncIteration:
                    break
                if isinstance(item, TextDelta):
                    text.append(item.text)
                    pending.add(item.text)
                elif isinstance(item, SkeletonUpdate):
                    await flush()
                    skeleton = item.skeleton
                    version += 1
                    await append_run(
                        store,
                        ctx,
                        ctx.event(
                            EventType.SKELETON_UPDATED,
                            {"skeleton": skeleton, "framework_version": version},
                        ),
                    )
                elif isinstance(item, DraftUpdate):
                    await flush()
                    draft = item
                    await append_run(
                        store,
                        ctx,
                        ctx.event(
                            EventType.DRAFT_UPDATED,
                            {"draft_subject": item.subject, "draft_body": item.body},
                        ),
                    )
            elif next_item is not None and time.monotonic() >= idle_deadline:
                raise stalled(engine, engine_timeout_s)
            if pending.due(time.monotonic(), writing is not None):
                write_delta()
    finally:
        if next_item is not None:
            next_item.cancel()
        if writing is not None:
            # let the delta being written settle, so whatever ends the run appends at
            # the stream's true version; its outcome is the run's only if it got here
            await asyncio.wait({writing}, timeout=SETTLE_S + ctx.storage_wait_s)
            if writing.done() and not writing.cancelled():
                writing.exception()
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()
    await flush()
    await _complete(store, ctx, "".join(text), skeleton, draft, version)


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
