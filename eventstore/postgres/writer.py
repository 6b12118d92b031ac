"""The PostgreSQL store's writer: a batch in one statement, and no lock across round trips.

Positions are handed out under the cluster-wide ``log_head`` row lock, so
they are gapless and in commit order across nodes. That lock is only ever
taken inside one statement, ``write_batch_at_head`` (a server-side function,
its own transaction): it locks the head, writes the batch only if the head is
still the one the batch was planned on, moves it, ``NOTIFY``s, commits. No
client round trip happens while it is held, so a node paused or cut off
mid-append holds nothing: the others keep writing (issue 19).

A batch is planned on facts: what the writer knows from its own last batch
(``known.py``), else one read without any lock (stored event ids, stream
heads, documents, snapshot marks, lease epochs; one snapshot, so every fact
is as of the head it returns). The batch planner (``eventstore/batch.py``)
decides every request in Python exactly as the database would at that head,
and the conditional write makes that true: if another writer moved the head
first, the batch is read and planned again. That race is lock-free (a lost
race means someone else's batch committed), and so that no writer can lose it
forever, one that lost :data:`RACES_BEFORE_RESERVING` in a row reserves the
next write (``RESERVE_HEAD``, one statement): other writers' conditional
writes are refused until it writes or the reservation expires, a bound
derived from the lease (``eventstore/leases.py``). A paused reserver thus delays the
others by that bound at most.

Fencing: a run's writes carry its lease epoch (``Fence``). A batch whose
fence is not its run's current epoch is refused as ``LeaseLost`` before it is
planned, and the write statement checks every fence again under a share lock
on the lease rows, so a takeover either waits for the write's commit or the
write sees the new epoch and writes nothing.

A batch that storage refused for now (a failover) is written again, the
same requests with the same event ids; a try whose commit landed unanswered
is answered once, as written (``again.py``).

The database's unique constraints stay the backstop: if they reject a batch
it is planned again looking every id up, then retried one caller per
transaction, so a bad request still fails alone. Rebuilds and imports lock
the head in an ordinary transaction, bounded by the lease-derived
``idle_in_transaction_session_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence

import asyncpg

from sessionstream.core.errors import LeaseLost, ValidationFailed
from sessionstream.eventstore.batch import (
    BatchPlan,
    BatchPlanner,
    Unknown,
    check_import,
    check_request,
    storable,
)
from sessionstream.eventstore.clock import exceptions, stamp
from sessionstream.eventstore.compaction import targets_of
from sessionstream.eventstore.groupcommit import Outcome, Pending
from sessionstream.eventstore.model import RecordedEvent, utc_now
from sessionstream.eventstore.postgres import schema as sql
from sessionstream.eventstore.postgres.again import SentPlans, any_stored, durable_head
from sessionstream.eventstore.postgres.errors import answer_lost
from sessionstream.eventstore.postgres.facts import Facts, Moved
from sessionstream.eventstore.postgres.known import Known
from sessionstream.eventstore.postgres.refold import drop_unkept, refold
from sessionstream.eventstore.projector import (
    Projection,
    Refold,
    interested,
)
from sessionstream.eventstore.snapshots import Ident, SnapshotPolicy

log = logging.getLogger("sessionstream.eventstore")

#: conditional writes lost to other writers in a row before a batch reserves the head
RACES_BEFORE_RESERVING = 2


class Rejected(Exception):
    """The database refused a batch's writes (a constraint the plan did not foresee)."""


class PostgresWriter:
    """The writer connection and what runs on it, one batch at a time."""

    def __init__(
        self,
        projections: Sequence[Projection],
        snapshot_every: int,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        reserve_s: float = 1.0,
        stop_file: str = "",
    ) -> None:
        self.projections = tuple(projections)
        self.snapshot_every = snapshot_every
        self.policy = SnapshotPolicy(projections, snapshot_every)
        #: the ``NOTIFY`` channel of the store's schema
        self.channel = ""
        #: the writer connection, reopened when lost
        self.conn: asyncpg.Connection | None = None
        self._connect = connect
        #: what the database holds as far as this writer knows (``known.py``)
        self.known = Known()
        #: this writer's name in the head's reservation
        self.writer_id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        #: how long a reservation of the head lasts if its writer never writes
        self.reserve_s = reserve_s
        #: fault injection (tests): while this file exists, the next append reserves
        #: the head, plans, removes the file and stops this process (SIGSTOP)
        self.stop_file = stop_file
        #: batches written in one round trip, those planned on a read, races lost,
        #: reservations taken
        self.planned_on_known = 0
        self.read_under_lock = 0  # the name it had; now: planned on a read (no lock)
        self.races_lost = 0
        self.reservations = 0
        #: the plans whose write was sent for the batch in hand (``again.py``)
        self.sent = SentPlans()

    def forget(self) -> None:
        """Something other than this writer's appends changed the tables (an import, a rebuild)."""
        self.known.forget()

    async def connection(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            self.conn = None
            self.conn = await self._connect()
        return self.conn

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await asyncio.wait_for(conn.close(), 5)

    async def write_batch(
        self, batch: list[Pending], *, again: bool = False
    ) -> tuple[list[Outcome], list[list[RecordedEvent]]]:
        """Outcomes in batch order and the committed events as contiguous runs.

        ``again``: this batch was tried before and storage refused it; what that try
        may have committed is answered as this writer's own (``again.py``)."""
        outcomes, runs = await self._write_batch(batch)
        if any_stored(outcomes):
            await durable_head(await self.connection())
            if again:
                outcomes = self.sent.own(outcomes)
        return outcomes, runs

    async def _write_batch(
        self, batch: list[Pending]
    ) -> tuple[list[Outcome], list[list[RecordedEvent]]]:
        stop = self._stop_armed()
        try:
            plan = None if stop else await self._write_on_known(batch)
        except BaseException:
            self.known.forget()  # committed or not: unknown
            raise
        if plan is not None:
            return plan.outcomes, [plan.records] if plan.records else []
        try:  # event ids not looked up: a retried one is rare, and UNIQUE refuses it
            outcomes, records = await self._write_once(batch, optimistic=True, stop=stop)
            return outcomes, [records] if records else []
        except Rejected:
            pass
        try:  # every id looked up
            outcomes, records = await self._write_once(batch, optimistic=False)
            return outcomes, [records] if records else []
        except Rejected as exc:
            if len(batch) == 1:
                return [ValidationFailed(f"append rejected by the store: {exc}")], []
        # one caller per transaction, so the one the database refuses fails alone
        outcomes = []
        runs: list[list[RecordedEvent]] = []
        for pending in batch:
            try:
                done, records = await self._write_once([pending], optimistic=False)
            except Rejected as exc:
                outcomes.append(ValidationFailed(f"append rejected by the store: {exc}"))
                continue
            outcomes.extend(done)
            if records:
                runs.append(records)
        return outcomes, runs

    async def _write_on_known(self, batch: Sequence[Pending]) -> BatchPlan | None:
        """The batch planned on what is known and written in one round trip, or None."""
        known = self.known
        if not known.covers(r.stream_id for p in batch for r in p.requests):
            return None
        assert known.head is not None
        planner = BatchPlanner(
            known.head,
            known.streams,
            at=stamp(utc_now(), known.newest),
            optimistic=True,  # a retried id: UNIQUE refuses it, and the sure path decides
            projections=self.projections,
            load_doc=known.doc,
            snapshot_every=self.snapshot_every,
            last_snapshot=known.last_snapshot,
        )
        try:
            for pending in batch:
                planner.accept(planner.decide(pending.requests))
        except Unknown:
            return None
        plan = planner.plan()
        if not plan.records:  # refusals only: nothing to write, nothing to wait for
            return plan
        conn = await self.connection()
        try:
            row = await self._write_at(conn, plan, known.head, batch)
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError):
            known.forget()
            return None
        if row["at_head"] != known.head or row["reserved"] or row["stale"]:
            known.forget()  # moved, another writer's turn, or a fence to refuse: read
            return None
        self.planned_on_known += 1
        known.wrote(plan)
        return plan

    async def _write_at(
        self, conn: asyncpg.Connection, plan: BatchPlan, base: int, batch: Sequence[Pending]
    ) -> asyncpg.Record:
        """``write_batch_at_head``: the plan, if the head is ``base`` and every fence holds."""
        fences = {r.fence for p in batch for r in p.requests if r.fence is not None}
        args = sql.write_batch_args(
            plan.records, plan.streams, plan.docs, plan.snapshots, plan.head, self.channel
        )
        self.sent.record(plan)
        try:
            row = await conn.fetchrow(
                sql.WRITE_BATCH_AT_HEAD,
                *args,
                base,
                self.writer_id,
                [f.run_id for f in fences],
                [f.epoch for f in fences],
            )
        except BaseException as exc:
            self.sent.lost = self.sent.lost or answer_lost(exc)
            raise
        assert row is not None
        if row["at_head"] == base and not row["reserved"] and not row["stale"]:
            # written: the rows of runs it ended go (a failure here leaves rows the fold
            # gives anyway, so it must not fail a write that committed)
            try:
                await drop_unkept(conn, plan.docs)
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("finished documents kept after a write: %s", exc)
        return row

    async def _reserve(self, conn: asyncpg.Connection) -> None:
        """Wait for the head's reservation: each other writer's lasts ``reserve_s`` at most."""
        pause = 0.002
        while await conn.fetchval(sql.RESERVE_HEAD, self.writer_id, self.reserve_s) is None:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)
        self.reservations += 1

    async def _write_once(
        self, batch: Sequence[Pending], *, optimistic: bool, stop: bool = False
    ) -> tuple[list[Outcome], list[RecordedEvent]]:
        """Read, plan and write at the head read until the write lands (see the module doc)."""
        conn = await self.connection()
        self.read_under_lock += 1
        refused: dict[int, Outcome] = {}  # batch index -> LeaseLost
        races = 0
        reserved = False
        try:
            while True:
                live = [i for i in range(len(batch)) if i not in refused]
                if stop or races >= RACES_BEFORE_RESERVING:
                    await self._reserve(conn)
                    reserved = True
                try:
                    facts, plan = await self._plan(conn, [batch[i] for i in live], optimistic)
                except Moved:
                    races += 1
                    continue
                lost = self._fenced_off([batch[i] for i in live], facts.epochs)
                if lost:
                    refused.update((live[j], lost[j]) for j in lost)
                    continue
                if stop:
                    stop = False
                    self._stop_here()
                if not plan.records:
                    break
                assert facts.base is not None
                try:
                    row = await self._write_at(conn, plan, facts.base, [batch[i] for i in live])
                except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                    raise Rejected(str(exc)) from exc
                if row["stale"]:  # a takeover between the read and the write
                    stale = set(row["stale"])
                    for i in live:
                        for r in batch[i].requests:
                            if r.fence is not None and r.fence.epoch in stale:
                                refused[i] = LeaseLost(r.fence.run_id, r.fence.epoch)
                    continue
                if row["at_head"] != facts.base or row["reserved"]:
                    races += 1
                    self.races_lost += 1
                    self.known.forget()
                    continue
                reserved = False  # the write cleared it
                break
        except BaseException:
            self.known.forget()
            raise
        finally:
            if reserved:  # nothing written (refusals only, or a failure): others' turn now
                with contextlib.suppress(Exception):
                    await conn.execute(sql.UNRESERVE_HEAD, self.writer_id)
        self.known.wrote(plan)
        planned = iter(plan.outcomes)
        outcomes = [refused[i] if i in refused else next(planned) for i in range(len(batch))]
        return outcomes, plan.records

    def _stop_armed(self) -> bool:
        return bool(self.stop_file) and os.path.exists(self.stop_file)

    def _stop_here(self) -> None:
        """Fault injection: stop this process mid-append, holding the head's reservation
        with the batch planned (a test resumes it with SIGCONT)."""
        os.unlink(self.stop_file)
        os.kill(os.getpid(), signal.SIGSTOP)

    @staticmethod
    def _fenced_off(batch: Sequence[Pending], epochs: dict[str, int]) -> dict[int, Outcome]:
        """The callers whose fence is not their run's lease epoch any more, by index."""
        lost: dict[int, Outcome] = {}
        for index, pending in enumerate(batch):
            for request in pending.requests:
                fence = request.fence
                if fence is not None and epochs.get(fence.run_id) != fence.epoch:
                    lost[index] = LeaseLost(fence.run_id, fence.epoch)
        return lost

    async def _plan(
        self, conn: asyncpg.Connection, batch: Sequence[Pending], optimistic: bool
    ) -> tuple[Facts, BatchPlan]:
        at = utc_now()
        ids: set[str] = set()
        streams: set[str] = set()
        runs = {r.fence.run_id for p in batch for r in p.requests if r.fence is not None}
        probes: list[RecordedEvent] = []
        for pending in batch:
            for request in pending.requests:
                stream_id = request.stream_id
                try:
                    check_request(request, [e.event_id for e in request.events])
                except ValidationFailed:
                    continue  # refused before any fact is needed; PostgreSQL may not take it
                streams.add(stream_id)
                if not optimistic:
                    ids.update(e.event_id for e in request.events)
                if not interested(self.projections, stream_id):
                    continue  # no document to read: probing each event was most of a bulk plan
                for new in request.events:
                    probes.append(
                        RecordedEvent(
                            0, stream_id, 0, new.event_id, new.type, new.data,
                            new.metadata, new.correlation_id, at, "",
                        )
                    )  # fmt: skip
        facts = Facts()
        targets = targets_of(r for p in batch for r in p.requests) if ids else None
        await facts.read(
            conn, ids, streams, self._doc_keys(probes), self.policy.series(probes), runs, targets
        )
        planner = BatchPlanner(
            facts.head,
            facts.streams,
            facts.events,
            at=stamp(at, facts.newest),
            optimistic=optimistic,
            projections=self.projections,
            load_doc=facts.doc,
            snapshot_every=self.snapshot_every,
            last_snapshot=facts.last_snapshot,
        )
        for pending in batch:
            while True:
                try:
                    decision = planner.decide(pending.requests)
                    break
                except Unknown as unknown:  # a projection keyed an event unlike its probe
                    if unknown.what != "events":
                        await facts.answer(conn, unknown)
                        continue
                    asked = [i for i in unknown.ident if storable(i)]
                    await facts.read(conn, ids=asked, targets=targets_of(pending.requests))
                    planner.learn(
                        unknown.ident, [facts.events[i] for i in asked if i in facts.events]
                    )
            planner.accept(decision)
        self.known.read(
            facts.head,
            facts.newest,
            (sorted(streams), facts.streams),
            (facts.asked_docs, facts.docs),
            (facts.asked_snapshots, facts.snapshots),
        )
        return facts, planner.plan()

    def _doc_keys(self, events: Iterable[RecordedEvent]) -> set[Ident]:
        keys: set[Ident] = set()
        for event in events:
            for projection in interested(self.projections, event.stream_id):
                key = projection.key(event)
                if key is not None:
                    keys.add((projection.kind, key))
        return keys

    # import and rebuild (the caller holds the head lock) ------------------------------------
    async def import_events(self, conn: asyncpg.Connection, events: list[RecordedEvent]) -> None:
        """``EventStore.import_events`` inside the caller's transaction."""
        facts = Facts()
        stream_ids = {e.stream_id for e in events if storable(e.stream_id)}
        ids = {e.event_id for e in events if storable(e.event_id)}
        await facts.read(conn, ids, stream_ids, self._doc_keys(events), self.policy.series(events))
        after = check_import(events, facts.head, facts.streams, facts.events)
        late = exceptions(events, facts.newest)[0]
        if late:
            await conn.execute(
                sql.INSERT_CLOCK_EXCEPTIONS, [p for p, _ in late], [t for _, t in late]
            )
        while True:
            refold = Refold(
                self.projections,
                self.snapshot_every,
                load=facts.doc,
                last_snapshot=facts.last_snapshot,
            )
            try:
                docs, snapshots = refold.page(events)
                break
            except Unknown as unknown:
                await facts.answer(conn, unknown)
        args = sql.write_batch_args(
            events, after, docs, snapshots, events[-1].position, self.channel
        )
        try:
            await conn.execute(sql.WRITE_BATCH, *args)
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
            raise ValidationFailed(f"import rejected by the store: {exc}") from exc
        await drop_unkept(conn, docs)

    async def refold(self, conn: asyncpg.Connection) -> int:
        """Fold the whole log into emptied read-model tables (``refold.py``)."""
        return await refold(conn, self.projections, self.snapshot_every)
