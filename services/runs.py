"""The run engine: a turn or an example batch as an owned asyncio task.

Every step of a run is an event on ``run-<runId>``; the durable results land
on the session stream in the same transaction as the run's one terminal
event, which also releases the session (``task_status`` back to null). The
run task is the only writer of its run stream and appends with an expected
version, so a terminal event written by someone else (a cancel on another
node, recovery) makes the task stop instead of writing past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sessionstream.core.errors import (
    ConcurrencyConflict,
    EngineError,
    Overloaded,
    SessionStreamError,
)
from sessionstream.core.vocabulary import TERMINAL, EventType, run_stream, session_stream
from sessionstream.engines.base import (
    DEFAULT_VAR_NAMES,
    DraftUpdate,
    ExampleInput,
    ExampleResult,
    Message,
    ModelEngine,
    SkeletonUpdate,
    TextDelta,
    TurnInput,
)
from sessionstream.engines.provider import stalled
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.leases import LeaseStore
from sessionstream.eventstore.model import AppendRequest, NewEvent
from sessionstream.services.sessions import Claim

log = logging.getLogger("sessionstream.runs")

INTERRUPTED = "interrupted"
#: how often a run whose end could not be written is retried (single node)
UNENDED_RETRY_S = 1.0


class RunStopped(Exception):
    """Someone else ended this run (cancel elsewhere, recovery): stop quietly."""


@dataclass(slots=True)
class RunContext:
    claim: Claim
    seq: int = 1  # run.created is seq 1
    started: float = field(default_factory=time.monotonic)

    @property
    def stream(self) -> str:
        return run_stream(self.claim.run_id)

    def meta(self) -> dict[str, Any]:
        return {
            "actor": {"type": "run", "id": self.claim.run_id},
            "session_id": self.claim.session_id,
        }

    def event(self, type_: str, data: dict[str, Any]) -> NewEvent:
        return NewEvent(
            type_, data, self.meta(), correlation_id=session_stream(self.claim.session_id)
        )

    def session_event(self, type_: str, data: dict[str, Any]) -> NewEvent:
        return NewEvent(type_, data, self.meta())


class RunManager:
    """Executes runs with a bound on how many run at once; the rest queue."""

    def __init__(
        self,
        store: EventStore,
        engine: ModelEngine,
        *,
        max_concurrent: int = 32,
        max_queued: int = 1000,
        examples_concurrency: int = 4,
        coalesce_ms: float = 30.0,
        engine_timeout_s: float = 60.0,
        on_event: Callable[[str], None] | None = None,
        node_id: str = "local",
        lease_ttl_s: float = 15.0,
    ) -> None:
        self.store = store
        # a store shared by several nodes: runs are owned through leases
        self.leases: LeaseStore | None = store if isinstance(store, LeaseStore) else None
        self.node_id = node_id
        self.lease_ttl_s = lease_ttl_s
        self.engine = engine
        self.coalesce_s = coalesce_ms / 1000
        self.engine_timeout_s = engine_timeout_s
        self.examples_concurrency = examples_concurrency
        self._slots = asyncio.Semaphore(max_concurrent)
        self.max_queued = max_queued
        self.refused = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._on_event = on_event
        #: runs whose terminal event could not be written yet: run id -> (type, data)
        self._unended: dict[str, tuple[str, dict[str, Any]]] = {}
        self.queued = 0
        self.completed = 0
        self._shutting_down = False
        self.recovered = 0

    @property
    def active(self) -> int:
        return len(self._tasks)

    def is_local(self, run_id: str) -> bool:
        return run_id in self._tasks

    # starting -----------------------------------------------------------------
    def check_capacity(self) -> None:
        """Refuse a new run before its claim is written when too many already wait."""
        if self.queued >= self.max_queued:
            self.refused += 1
            raise Overloaded(
                f"{self.queued} runs are waiting for a slot on this server; retry shortly",
                retry_after=2.0,
            )

    def start(self, claim: Claim, kind_input: dict[str, Any]) -> None:
        """Own a task for the claimed run; raise if it cannot start (the caller releases)."""
        if claim.run_id in self._tasks:
            return
        ctx = RunContext(claim)
        task = asyncio.create_task(self._run(ctx, kind_input), name=f"run:{claim.run_id}")
        self._tasks[claim.run_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(claim.run_id, None))

    async def release_failed_start(self, claim: Claim, reason: str) -> None:
        """Undo a claim whose run could not start, before the 500 goes out."""
        try:
            await self.finish_elsewhere(claim.run_id, EventType.RUN_FAILED, {"error": reason})
        except Exception:
            self._unended[claim.run_id] = (EventType.RUN_FAILED, {"error": reason})
            raise

    async def _run(self, ctx: RunContext, kind_input: dict[str, Any]) -> None:
        self.queued += 1
        try:
            await self._lease(ctx.claim.run_id, take=True)
            async with self._slots:
                self.queued -= 1
                await self._execute(ctx, kind_input)
        except RunStopped:
            pass
        except asyncio.CancelledError:
            if self._shutting_down:
                await self._end_quietly(ctx, EventType.RUN_FAILED, {"error": INTERRUPTED})
            else:
                await self._end_quietly(ctx, EventType.RUN_CANCELED, {"reason": "canceled"})
            raise
        except Exception as exc:  # every failure ends the run; none leaves the session busy
            reason = exc.message if isinstance(exc, SessionStreamError) else repr(exc)
            if not isinstance(exc, EngineError):
                log.exception("run %s crashed", ctx.claim.run_id)
            await self._end_quietly(ctx, EventType.RUN_FAILED, {"error": reason})
        finally:
            self.completed += 1
            await self._lease(ctx.claim.run_id, take=False)

    async def _execute(self, ctx: RunContext, kind_input: dict[str, Any]) -> None:
        if ctx.claim.kind == "turn":
            await self._turn(ctx, kind_input)
        else:
            await self._examples(ctx, kind_input)

    # appending ------------------------------------------------------------------
    async def _append_run(self, ctx: RunContext, *events: NewEvent) -> None:
        try:
            result = await self.store.append(ctx.stream, events, expected_version=ctx.seq)
        except ConcurrencyConflict as exc:
            raise RunStopped from exc
        ctx.seq = result.version

    async def _finish(
        self, ctx: RunContext, run_events: list[NewEvent], session_events: list[NewEvent]
    ) -> None:
        """Terminal event and durable results in one transaction."""
        session_events = [
            *session_events,
            ctx.session_event(
                EventType.RUN_RELEASED, {"run_id": ctx.claim.run_id, "outcome": run_events[-1].type}
            ),
        ]
        try:
            await self.store.transact(
                [
                    AppendRequest(ctx.stream, tuple(run_events), ctx.seq),
                    AppendRequest(session_stream(ctx.claim.session_id), tuple(session_events)),
                ]
            )
        except ConcurrencyConflict as exc:
            raise RunStopped from exc

    async def _end_quietly(self, ctx: RunContext, type_: str, data: dict[str, Any]) -> None:
        """End the run, retrying briefly; if storage still refuses, upkeep keeps retrying.

        A retry that races an earlier attempt which did commit fails on the
        run stream's expected version (``RunStopped``), so it can never end a
        run twice.
        """
        delay = 0.05
        for attempt in range(4):
            try:
                await asyncio.shield(self._finish(ctx, [ctx.event(type_, data)], []))
                return
            except RunStopped:
                return
            except Exception as exc:
                if attempt == 3:
                    log.warning(
                        "could not end run %s (%s); retrying every %gs",
                        ctx.claim.run_id,
                        exc.message if isinstance(exc, SessionStreamError) else repr(exc),
                        self.upkeep_s,
                    )
                    self._unended[ctx.claim.run_id] = (type_, data)
                    return
                await asyncio.sleep(delay)
                delay *= 2

    async def retry_unended(self) -> int:
        """End the runs whose own ending failed; returns how many are still stuck."""
        for run_id, (type_, data) in list(self._unended.items()):
            if self.is_local(run_id):
                continue
            try:
                await self.finish_elsewhere(run_id, type_, data)
            except Exception as exc:  # still failing: next round (upkeep must not die)
                log.debug("run %s still cannot end: %r", run_id, exc)
                continue
            self._unended.pop(run_id, None)
            log.info("ended run %s after storage came back", run_id)
        return len(self._unended)

    # turns ------------------------------------------------------------------------
    async def _turn(self, ctx: RunContext, kind_input: dict[str, Any]) -> None:
        session = await self.store.get_doc("session", ctx.claim.session_id)
        if session is None:
            raise RunStopped
        row = session.body["row"]
        message = str(kind_input["message"])
        await self.store.transact(
            [
                AppendRequest(
                    ctx.stream, (ctx.event(EventType.RUN_STARTED, {"kind": "turn"}),), ctx.seq
                ),
                AppendRequest(
                    session_stream(ctx.claim.session_id),
                    (
                        ctx.session_event(
                            EventType.MESSAGE_APPENDED, {"role": "user", "content": message}
                        ),
                    ),
                ),
            ]
        )
        ctx.seq += 1
        inp = TurnInput(
            message=message,
            history=tuple(
                Message(str(m.get("role", "")), str(m.get("content", "")))
                for m in (row["messages"] or [])
                if isinstance(m, dict)
            ),
            skeleton=row["skeleton"],
            framework_version=row["framework_version"] or 0,
            draft_subject=row["draft_subject"],
            draft_body=row["draft_body"],
            available_vars=tuple(kind_input.get("availableVarNames") or DEFAULT_VAR_NAMES),
            sample_leads=tuple(kind_input.get("sampleLeads") or ()),
            sequence_context=kind_input.get("sequenceContext"),
        )
        text: list[str] = []
        pending: list[str] = []
        last_flush = 0.0
        skeleton: dict[str, Any] | None = None
        draft: DraftUpdate | None = None
        version = inp.framework_version

        async def flush() -> None:
            nonlocal last_flush
            if pending:
                chunk = "".join(pending)
                pending.clear()
                await self._append_run(ctx, ctx.event(EventType.MESSAGE_DELTA, {"text": chunk}))
                last_flush = time.monotonic()

        stream = self.engine.turn(inp).__aiter__()
        # The engine's next item is awaited as its own task: a timeout (to flush a
        # coalescing window, or to detect a hung engine) must never cancel it, since
        # cancelling an async generator's __anext__ ends the generator for good.
        next_item: asyncio.Future[Any] | None = None
        idle_deadline = 0.0
        try:
            while True:
                if next_item is None:
                    next_item = asyncio.ensure_future(stream.__anext__())
                    idle_deadline = time.monotonic() + self.engine_timeout_s
                deadline = idle_deadline
                if pending:
                    deadline = min(deadline, last_flush + self.coalesce_s)
                done, _ = await asyncio.wait(
                    {next_item}, timeout=max(0.0, deadline - time.monotonic())
                )
                if not done:
                    if pending and time.monotonic() >= last_flush + self.coalesce_s:
                        await flush()
                    elif time.monotonic() >= idle_deadline:
                        raise stalled(self.engine, self.engine_timeout_s)
                    continue
                finished, next_item = next_item, None
                try:
                    item = finished.result()
                except StopAsyncIteration:
                    break
                if isinstance(item, TextDelta):
                    if not item.text:
                        continue
                    text.append(item.text)
                    pending.append(item.text)
                    if time.monotonic() - last_flush >= self.coalesce_s:
                        await flush()
                elif isinstance(item, SkeletonUpdate):
                    await flush()
                    skeleton = item.skeleton
                    version += 1
                    await self._append_run(
                        ctx,
                        ctx.event(
                            EventType.SKELETON_UPDATED,
                            {"skeleton": skeleton, "framework_version": version},
                        ),
                    )
                elif isinstance(item, DraftUpdate):
                    await flush()
                    draft = item
                    await self._append_run(
                        ctx,
                        ctx.event(
                            EventType.DRAFT_UPDATED,
                            {"draft_subject": item.subject, "draft_body": item.body},
                        ),
                    )
        finally:
            if next_item is not None:
                next_item.cancel()
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        await flush()
        reply = "".join(text)
        run_events = [
            ctx.event(
                EventType.MESSAGE_COMPLETED, {"message": {"role": "assistant", "content": reply}}
            )
        ]
        session_events = [
            ctx.session_event(EventType.MESSAGE_APPENDED, {"role": "assistant", "content": reply})
        ]
        if skeleton is not None:
            session_events.append(
                ctx.session_event(
                    EventType.SKELETON_REVISED, {"skeleton": skeleton, "run_id": ctx.claim.run_id}
                )
            )
        if draft is not None:
            session_events.append(
                ctx.session_event(
                    EventType.DRAFT_REVISED,
                    {
                        "draft_subject": draft.subject,
                        "draft_body": draft.body,
                        "run_id": ctx.claim.run_id,
                    },
                )
            )
        output = {
            "message": reply,
            "skeleton_updated": skeleton is not None,
            "framework_version": version,
            "draft_updated": draft is not None,
        }
        run_events.append(ctx.event(EventType.RUN_COMPLETED, {"output": output}))
        await self._finish(ctx, run_events, session_events)

    # examples ---------------------------------------------------------------------
    async def _examples(self, ctx: RunContext, kind_input: dict[str, Any]) -> None:
        session = await self.store.get_doc("session", ctx.claim.session_id)
        if session is None:
            raise RunStopped
        row = session.body["row"]
        leads: list[dict[str, Any]] = list(kind_input["leads"])
        total = len(leads)
        await self._append_run(ctx, ctx.event(EventType.RUN_STARTED, {"kind": "examples"}))
        await self._append_run(
            ctx, ctx.event(EventType.EXAMPLES_PROGRESS, {"done": 0, "total": total})
        )
        gate = asyncio.Semaphore(self.examples_concurrency)
        lock = asyncio.Lock()
        results: list[ExampleResult | None] = [None] * total
        done = 0

        async def one(index: int, lead: dict[str, Any]) -> None:
            nonlocal done
            async with gate:
                result = await asyncio.wait_for(
                    self.engine.example(
                        ExampleInput(
                            lead=lead,
                            skeleton=row["skeleton"],
                            draft_subject=row["draft_subject"],
                            draft_body=row["draft_body"],
                            available_vars=tuple(
                                kind_input.get("availableVarNames") or DEFAULT_VAR_NAMES
                            ),
                            sequence_context=kind_input.get("sequenceContext"),
                        )
                    ),
                    timeout=self.engine_timeout_s,
                )
            async with lock:  # one writer of the run stream at a time keeps seq exact
                results[index] = result
                done += 1
                example: dict[str, Any] = {
                    "lead_id": result.lead_id,
                    "subject": result.subject,
                    "body": result.body,
                }
                if result.missing:
                    example["missing"] = list(result.missing)
                await self._append_run(
                    ctx,
                    ctx.event(EventType.EXAMPLE_GENERATED, example),
                    ctx.event(EventType.EXAMPLES_PROGRESS, {"done": done, "total": total}),
                )

        try:
            async with asyncio.TaskGroup() as group:
                for index, lead in enumerate(leads):
                    group.create_task(one(index, lead))
        except* TimeoutError as eg:
            raise stalled(self.engine, self.engine_timeout_s, lead=True) from eg.exceptions[0]
        except* RunStopped as eg:
            raise RunStopped from eg.exceptions[0]
        except* EngineError as eg:
            raise eg.exceptions[0] from None
        examples = [
            {"lead_id": r.lead_id, "subject": r.subject, "body": r.body}
            for r in results
            if r is not None
        ]
        missing = {r.lead_id: list(r.missing) for r in results if r is not None and r.missing}
        replace = bool(kind_input.get("isFirstBatch", True))
        await self._finish(
            ctx,
            [
                ctx.event(
                    EventType.RUN_COMPLETED,
                    {"output": {"examples": len(examples), "missing_variables": missing}},
                )
            ],
            [
                ctx.session_event(
                    EventType.EXAMPLES_GENERATED,
                    {"examples": examples, "replace": replace, "run_id": ctx.claim.run_id},
                )
            ],
        )

    # cancel and recovery ----------------------------------------------------------------
    async def cancel(self, run_id: str, reason: str = "canceled") -> None:
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        # also covers a task canceled before its first step, which never ran its handler
        await self.finish_elsewhere(run_id, EventType.RUN_CANCELED, {"reason": reason})

    async def finish_elsewhere(self, run_id: str, type_: str, data: dict[str, Any]) -> bool:
        """End a run this process is not executing (orphaned, or on a dead node)."""
        for _ in range(20):
            doc = await self.store.get_doc("run", run_id)
            if doc is None or doc.body["status"] not in ("queued", "running"):
                return False
            claim = Claim(
                run_id, doc.body["session_id"], doc.body["user_id"], doc.body["kind"], False
            )
            ctx = RunContext(claim, seq=doc.version)
            ctx_event = ctx.event(type_, data)
            try:
                await self._finish(ctx, [ctx_event], [])
                return True
            except RunStopped:
                continue
        return False

    async def recover(self, *, is_orphan: Callable[[str], bool] | None = None) -> int:
        """End every run without a terminal event that nobody is executing."""
        count = 0
        for doc in await self.store.list_docs("run", active=True):
            run_id = doc.key
            if self.is_local(run_id) or (is_orphan is not None and not is_orphan(run_id)):
                continue
            if await self.finish_elsewhere(run_id, EventType.RUN_FAILED, {"error": INTERRUPTED}):
                count += 1
        # a session whose claim committed but whose run stream never did
        for doc in await self.store.list_docs("session", active=True, include_deleted=True):
            run_id = doc.body["active_run"]
            run = await self.store.get_doc("run", run_id) if run_id else None
            if run is None or run.body["status"] not in ("queued", "running"):
                await self.store.append(
                    session_stream(doc.key),
                    [
                        NewEvent(
                            EventType.RUN_RELEASED,
                            {"run_id": run_id, "outcome": EventType.RUN_FAILED},
                            {"actor": {"type": "system", "id": "recovery"}},
                        )
                    ],
                )
                count += 1
        self.recovered += count
        return count

    # leases (several nodes on one database) ---------------------------------------------
    async def _lease(self, run_id: str, *, take: bool) -> None:
        """Best effort: a missed take is retried by the renewal, a missed drop expires."""
        if self.leases is None:
            return
        try:
            if take:
                await self.leases.acquire_lease(run_id, self.node_id, self.lease_ttl_s)
            else:
                await asyncio.shield(self.leases.release_lease(run_id))
        except SessionStreamError as exc:
            log.warning(
                "could not %s the lease of run %s: %s",
                "take" if take else "drop",
                run_id,
                exc.message,
            )

    async def recover_orphans(self) -> int:
        """``recover`` limited to runs whose owner is gone (all of them without leases)."""
        if self.leases is None:
            return await self.recover()
        active = await self.store.list_docs("run", active=True)
        runs = {d.key: d.body.get("updated_at") for d in active if not self.is_local(d.key)}
        orphans = await self.leases.expired_leases(runs, self.lease_ttl_s)
        count = await self.recover(is_orphan=orphans.__contains__)
        for run_id in orphans:
            await self._lease(run_id, take=False)
        return count

    @property
    def upkeep_s(self) -> float:
        return self.lease_ttl_s / 4 if self.leases is not None else UNENDED_RETRY_S

    async def upkeep(self) -> None:
        """Forever: retry runs whose end could not be written; with leases, renew this
        node's and end dead nodes' runs (every quarter TTL)."""
        while True:
            await asyncio.sleep(self.upkeep_s)
            await self.retry_unended()
            if self.leases is None:
                continue
            try:
                await self.leases.renew_leases(list(self._tasks), self.node_id, self.lease_ttl_s)
                recovered = await self.recover_orphans()
            except SessionStreamError as exc:
                log.warning("lease upkeep failed (%s); retrying", exc.message)
                continue
            if recovered:
                log.warning("ended %d run(s) whose node stopped renewing its lease", recovered)

    async def shutdown(self) -> None:
        self._shutting_down = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


def is_terminal(event_type: str) -> bool:
    return event_type in TERMINAL
