"""The run manager: every run this process executes is an owned asyncio task.

A run is a turn or an example batch (``services/turn.py``,
``services/examples.py``); whatever ends it (its last event, a failure, a
cancel, shutdown) writes exactly one terminal event, which also releases the
session (``task_status`` back to null). At most ``max_concurrent`` runs
execute at once and the rest queue; past ``max_queued`` a new run is refused
before its claim is written. Runs nobody executes any more (the process
died, or its node stopped renewing its lease) are ended by recovery, so no
session stays busy forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from sessionstream.core.errors import (
    ConcurrencyConflict,
    EngineError,
    Overloaded,
    SessionStreamError,
    StorageUnavailable,
)
from sessionstream.core.readmodels import ExamplesRunInput, RunInput, TurnRunInput
from sessionstream.core.vocabulary import EventType, session_stream
from sessionstream.engines.base import ModelEngine
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.leases import LeaseStore, RunOwner
from sessionstream.eventstore.model import Fence, NewEvent
from sessionstream.services.claims import Claim
from sessionstream.services.examples import run_examples
from sessionstream.services.ownership import run_of, session_of
from sessionstream.services.runlog import (
    ACTIVE,
    RETRY_MAX_S,
    SYSTEM,
    RunContext,
    RunStopped,
    commit,
    durably,
    end_run,
    ending,
)
from sessionstream.services.turn import run_turn

log = logging.getLogger("sessionstream.runs")

INTERRUPTED = "interrupted"
#: how often a run whose end could not be written is retried (single node)
UNENDED_RETRY_S = 1.0


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
        coalesce_ms: float = 0.0,
        engine_timeout_s: float = 60.0,
        node_id: str = "local",
        lease_ttl_s: float = 15.0,
        storage_wait_s: float = 60.0,
    ) -> None:
        self.store = store
        # a store shared by several nodes: runs are owned through leases
        self.leases: LeaseStore | None = store if isinstance(store, LeaseStore) else None
        self.node_id = node_id
        self.lease_ttl_s = lease_ttl_s
        #: how long a run's writes wait for storage before the run fails (``runlog.durably``)
        self.storage_wait_s = storage_wait_s
        self.engine = engine
        self.coalesce_s = coalesce_ms / 1000
        self.engine_timeout_s = engine_timeout_s
        self.examples_concurrency = examples_concurrency
        self._slots = asyncio.Semaphore(max_concurrent)
        self.max_queued = max_queued
        self.refused = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: what each local run writes with (shutting down stops their waits for storage)
        self._contexts: dict[str, RunContext] = {}
        #: with leases, the epoch of each local run's lease (its writes' fence)
        self._epochs: dict[str, int] = {}
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

    def start(self, claim: Claim, ask: RunInput) -> None:
        """Own a task for the claimed run; raise if it cannot start (the caller releases)."""
        if claim.run_id in self._tasks:
            return
        ctx = RunContext(claim, storage_wait_s=self.storage_wait_s)
        task = asyncio.create_task(self._run(ctx, ask), name=f"run:{claim.run_id}")
        self._tasks[claim.run_id] = task
        self._contexts[claim.run_id] = ctx

        def done(_task: asyncio.Task[None]) -> None:
            self._tasks.pop(claim.run_id, None)
            self._contexts.pop(claim.run_id, None)

        task.add_done_callback(done)

    async def release_failed_start(self, claim: Claim, reason: str) -> None:
        """Undo a claim whose run could not start, before the 500 goes out."""
        try:
            await self._end_elsewhere(claim.run_id, EventType.RUN_FAILED, {"error": reason})
        except Exception:
            self._unended[claim.run_id] = (EventType.RUN_FAILED, {"error": reason})
            raise

    async def _run(self, ctx: RunContext, ask: RunInput) -> None:
        self.queued += 1
        try:
            ctx.fence = await durably(ctx, lambda: self._take(ctx.claim.run_id))
            async with self._slots:
                self.queued -= 1
                await self._execute(ctx, ask)
        except RunStopped:
            pass
        except asyncio.CancelledError:
            if self._shutting_down:
                await self._end_quietly(ctx, EventType.RUN_FAILED, {"error": INTERRUPTED})
            else:
                await self._end_quietly(ctx, EventType.RUN_CANCELED, {"reason": "canceled"})
            raise
        except StorageUnavailable as exc:  # storage refused for longer than the run waits
            reason = f"storage was unavailable for over {ctx.storage_wait_s:g}s: {exc.message}"
            await self._end_quietly(ctx, EventType.RUN_FAILED, {"error": reason})
        except Exception as exc:  # every failure ends the run; none leaves the session busy
            reason = exc.message if isinstance(exc, SessionStreamError) else repr(exc)
            if not isinstance(exc, EngineError):  # a bug, not a provider: logged and counted
                self.store.supervisor.report(
                    f"run {ctx.claim.run_id}", "run", exc, "it ends as run.failed"
                )
            await self._end_quietly(ctx, EventType.RUN_FAILED, {"error": reason})
        finally:
            self.completed += 1
            await self._drop(ctx.claim.run_id)

    async def _execute(self, ctx: RunContext, ask: RunInput) -> None:
        if ctx.claim.kind == "turn":
            await run_turn(
                self.store,
                self.engine,
                ctx,
                cast(TurnRunInput, ask),
                coalesce_s=self.coalesce_s,
                engine_timeout_s=self.engine_timeout_s,
            )
        else:
            await run_examples(
                self.store,
                self.engine,
                ctx,
                cast(ExamplesRunInput, ask),
                concurrency=self.examples_concurrency,
                engine_timeout_s=self.engine_timeout_s,
            )

    async def _end_quietly(self, ctx: RunContext, type_: str, data: dict[str, Any]) -> None:
        """End the run, trying again until storage takes it, so the session is freed as
        soon as storage is back (within ``RETRY_MAX_S``), not at the next upkeep round.

        The same requests are tried each time: a try whose commit landed but whose
        answer was lost makes the next one a no-op (its event ids are in the log),
        and a run ended meanwhile by others fails on its version (``RunStopped``),
        so a run never ends twice. The task, its lease and its renewal stay
        meanwhile, so no other node takes the run for a dead node's. Shutting
        down, it gives up after a few tries and leaves the end to upkeep.
        """
        requests = ending(ctx, [ctx.event(type_, data)])
        delay, tries = 0.05, 0
        while True:
            tries += 1
            try:
                await asyncio.shield(commit(self.store, ctx, requests))
                if tries > 1:
                    log.info("ended run %s once storage answered again", ctx.claim.run_id)
                return
            except RunStopped:
                return
            except asyncio.CancelledError:
                self._unended[ctx.claim.run_id] = (type_, data)
                raise
            except Exception as exc:
                if tries == 1 or (self._shutting_down and tries >= 4):
                    log.warning(
                        "could not end run %s (%s); %s",
                        ctx.claim.run_id,
                        exc.message if isinstance(exc, SessionStreamError) else repr(exc),
                        f"retrying every {self.upkeep_s:g}s"
                        if self._shutting_down
                        else "retrying until storage answers",
                    )
                if self._shutting_down and tries >= 4:
                    self._unended[ctx.claim.run_id] = (type_, data)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def retry_unended(self) -> int:
        """End the runs whose own ending failed; returns how many are still stuck."""
        for run_id, (type_, data) in list(self._unended.items()):
            if self.is_local(run_id):
                continue
            try:
                await self._end_elsewhere(run_id, type_, data)
            except Exception as exc:  # still failing: next round (upkeep must not die)
                log.debug("run %s still cannot end: %r", run_id, exc)
                continue
            self._unended.pop(run_id, None)
            log.info("ended run %s after storage came back", run_id)
        return len(self._unended)

    # cancel and recovery ----------------------------------------------------------------
    async def cancel(self, run_id: str, reason: str = "canceled") -> None:
        task = self._tasks.get(run_id)
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        # also covers a task canceled before its first step, which never ran its handler,
        # and a run on another node: taking its lease fences that node's writes off
        await self._end_elsewhere(run_id, EventType.RUN_CANCELED, {"reason": reason})

    async def recover(self, *, is_orphan: Callable[[str], bool] | None = None) -> int:
        """End every run without a terminal event that nobody is executing."""
        count = 0
        for doc in await self.store.list_docs("run", active=True):
            run_id = doc.key
            if self.is_local(run_id) or (is_orphan is not None and not is_orphan(run_id)):
                continue
            if run_id in self._unended:
                continue  # this node's run, its own end (its true outcome) still to write
            ended = await self._end_elsewhere(
                run_id, EventType.RUN_FAILED, {"error": INTERRUPTED}, actor=SYSTEM
            )
            count += ended
        # a session whose claim committed but whose run stream never did. The release
        # is appended at the version the session was listed at: a run that ended (and
        # released it) between the listing and the run's read is not released twice
        for doc in await self.store.list_docs("session", active=True, include_deleted=True):
            held_by = session_of(doc).body["active_run"]
            run = await self.store.get_doc("run", held_by) if held_by else None
            if run is None or run_of(run).body["status"] not in ACTIVE:
                try:
                    await self.store.append(
                        session_stream(doc.key),
                        [
                            NewEvent(
                                EventType.RUN_RELEASED,
                                {"run_id": held_by, "outcome": EventType.RUN_FAILED},
                                {"actor": SYSTEM},
                            )
                        ],
                        expected_version=doc.version,
                    )
                except ConcurrencyConflict:
                    continue  # the session moved on: released, or claimed again
                count += 1
        self.recovered += count
        return count

    # leases (several nodes on one database) ---------------------------------------------
    async def _take(self, run_id: str) -> Fence | None:
        """Take the run's lease: its epoch fences every write of the run (none without
        leases). A run that cannot take it fails (storage is failing anyway)."""
        if self.leases is None:
            return None
        epoch = await self.leases.acquire_lease(run_id, self.node_id, self.lease_ttl_s)
        self._epochs[run_id] = epoch
        return Fence(run_id, epoch)

    async def _drop(self, run_id: str) -> None:
        """Best effort: a lease not dropped expires (and one taken over since is left)."""
        epoch = self._epochs.pop(run_id, None)
        if self.leases is None or epoch is None:
            return
        try:
            await asyncio.shield(self.leases.release_lease(run_id, epoch))
        except SessionStreamError as exc:
            log.warning("could not drop the lease of run %s: %s", run_id, exc.message)

    async def _end_elsewhere(
        self,
        run_id: str,
        type_: str,
        data: dict[str, Any],
        *,
        actor: dict[str, str] | None = None,
    ) -> bool:
        """``end_run`` for a run no task here executes: with leases, under a lease taken
        for it, which fences off whichever node still thinks it runs it. ``actor``: who
        ends it, when not the run itself (recovery is ``SYSTEM``)."""
        if self.leases is None:
            return await end_run(self.store, run_id, type_, data, actor=actor)
        epoch = await self.leases.acquire_lease(run_id, self.node_id, self.lease_ttl_s)
        try:
            return await end_run(self.store, run_id, type_, data, Fence(run_id, epoch), actor=actor)
        finally:
            try:
                await asyncio.shield(self.leases.release_lease(run_id, epoch))
            except SessionStreamError as exc:  # it expires
                log.warning("could not drop the lease of run %s: %s", run_id, exc.message)

    async def recover_orphans(self) -> int:
        """``recover`` limited to runs whose owner is gone: without leases, every run
        when this process owns the store's runs, none while another server does."""
        if self.leases is None:
            if isinstance(self.store, RunOwner) and not self.store.owns_runs():
                log.warning("another server holds this store: its unended runs are left to it")
                return 0
            return await self.recover()
        active = await self.store.list_docs("run", active=True)
        runs: dict[str, str | None] = {
            d.key: run_of(d).body["updated_at"]
            for d in active
            if not self.is_local(d.key) and d.key not in self._unended
        }
        orphans = await self.leases.expired_leases(runs, self.lease_ttl_s)
        return await self.recover(is_orphan=orphans.__contains__)

    @property
    def upkeep_s(self) -> float:
        return self.lease_ttl_s / 4 if self.leases is not None else UNENDED_RETRY_S

    async def upkeep(self) -> None:
        """Forever: retry runs whose end could not be written; with leases, renew this
        node's (every quarter TTL) and end dead nodes' runs.

        Renewal and recovery are two tasks under the store's supervisor, so a
        crash in recovery never delays a renewal (a late renewal loses this
        node its runs) and each is restarted, counted and, if it keeps
        failing, named by ``/healthz``. Cancelling ``upkeep`` stops both.
        """
        supervisor = self.store.supervisor
        tasks = [supervisor.spawn("run-recovery", self._recovery_loop)]
        if self.leases is not None:
            tasks.append(supervisor.spawn("lease-renewal", self._renewal_loop))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _renewal_loop(self) -> None:
        """Renew first: after a crash the leases may be close to expiring."""
        assert self.leases is not None
        while True:
            try:
                await self.leases.renew_leases(dict(self._epochs), self.node_id, self.lease_ttl_s)
            except SessionStreamError as exc:
                # again soon: once storage is back this node's leases must be renewed
                # before any other node's recovery looks at them
                log.warning("lease renewal failed (%s); retrying", exc.message)
                await asyncio.sleep(min(self.upkeep_s, RETRY_MAX_S))
                continue
            await asyncio.sleep(self.upkeep_s)

    async def _recovery_loop(self) -> None:
        """Every ``upkeep_s``: the runs whose end is still to write, then dead nodes' runs.

        A lease that expired while storage was down says nothing about its node:
        no node could renew. So after this node saw storage fail, it judges no
        lease until storage has answered for a whole lease TTL, time enough for
        every live node to renew its own (each retries within ``RETRY_MAX_S``
        of storage coming back) and to write the true end of a run that failed.
        """
        failed_at: float | None = None
        while True:
            await asyncio.sleep(self.upkeep_s)
            await self.retry_unended()
            if self.leases is None:
                continue
            try:
                if failed_at is not None and time.monotonic() - failed_at < self.lease_ttl_s:
                    await self.store.head_position()  # does storage answer yet?
                    continue
                failed_at = None
                recovered = await self.recover_orphans()
            except SessionStreamError as exc:
                failed_at = time.monotonic()
                log.warning("run recovery failed (%s); retrying", exc.message)
                continue
            if recovered:
                log.warning("ended %d run(s) whose node stopped renewing its lease", recovered)

    async def shutdown(self) -> None:
        self._shutting_down = True
        for ctx in self._contexts.values():
            ctx.storage_wait_s = 0.0  # a few quick tries to end each run, no wait for storage
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
