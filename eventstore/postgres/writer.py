"""The PostgreSQL store's writer: a batch in one round trip, or four, whatever its size.

When the writer knows every fact a batch needs (``known.py``: what it last
read and wrote, as of the head it last saw), it plans the batch on them and
writes it with one statement in its own transaction, which writes only if
the head has not moved. Otherwise, the sure path: lock the ``log_head`` row;
read everything the batch needs (stored event ids, stream heads, documents,
snapshot marks) in one query; have the batch planner (``eventstore/batch.py``)
decide every request; write events, stream heads, documents, snapshots, the
new head and the ``NOTIFY`` in one statement of array ``unnest``s; commit.

Every append on every node locks the same row first, so appends are
serialised across the cluster and positions are handed out gapless and in
commit order, and the state read after the lock is current: the planner
decides in Python exactly what the database would. Documents are read up
front by probing the projections with the batch's new events; one a
projection keys differently once recorded is asked for (``Unknown``) and read
then. The database's unique constraints stay as the backstop: if they reject
the batch, it is rolled back and retried one caller per transaction, so a bad
request still fails alone. Rebuilds and imports run here too, under the same
lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg

from sessionstream.core.errors import ValidationFailed
from sessionstream.eventstore.batch import (
    BatchPlan,
    BatchPlanner,
    StreamHead,
    Unknown,
    check_import,
    check_request,
    storable,
)
from sessionstream.eventstore.clock import exceptions, stamp
from sessionstream.eventstore.groupcommit import Outcome, Pending
from sessionstream.eventstore.model import Doc, RecordedEvent, row_to_doc, row_to_event, utc_now
from sessionstream.eventstore.postgres import schema as sql
from sessionstream.eventstore.postgres.known import Known
from sessionstream.eventstore.postgres.packs import with_packs
from sessionstream.eventstore.projector import Projection, Refold, StreamFold, interested
from sessionstream.eventstore.snapshots import Ident, Series, Snapshot, SnapshotPolicy

#: a rebuild reads the log this many events at a time, stream by stream (``StreamFold``)
REBUILD_PAGE = 2000
REBUILD_BYTES = 4 << 20


class Rejected(Exception):
    """The database refused a batch's writes (a constraint the plan did not foresee)."""


@dataclass(slots=True)
class Facts:
    """What the database holds for one batch, read under the head lock."""

    head: int = 0
    #: the log's newest recorded_at (None: no event yet)
    newest: str | None = None
    events: dict[str, RecordedEvent] = field(default_factory=dict)
    streams: dict[str, StreamHead] = field(default_factory=dict)
    docs: dict[Ident, Doc] = field(default_factory=dict)
    snapshots: dict[Series, int] = field(default_factory=dict)
    asked_docs: set[Ident] = field(default_factory=set)
    asked_snapshots: set[Series] = field(default_factory=set)

    def doc(self, kind: str, key: str) -> Doc | None:
        if (kind, key) not in self.asked_docs:
            raise Unknown("doc", (kind, key))
        return self.docs.get((kind, key))

    def last_snapshot(self, stream_id: str, kind: str) -> int:
        if (stream_id, kind) not in self.asked_snapshots:
            raise Unknown("snapshot", (stream_id, kind))
        return self.snapshots.get((stream_id, kind), 0)

    async def read(
        self,
        conn: asyncpg.Connection,
        ids: Iterable[str] = (),
        streams: Iterable[str] = (),
        docs: Iterable[Ident] = (),
        series: Iterable[Series] = (),
    ) -> None:
        """Read these rows in one round trip (and the head)."""
        docs, series = set(docs), set(series)
        # text PostgreSQL cannot take cannot be stored either: asked, and absent
        keys = sorted(d for d in docs if storable(d[1]))
        marks = sorted(m for m in series if storable(m[0]))
        row = await conn.fetchrow(
            sql.READ_BATCH_STATE,
            list(ids),
            list(streams),
            [k[0] for k in keys],
            [k[1] for k in keys],
            [m[0] for m in marks],
            [m[1] for m in marks],
        )
        assert row is not None
        self.head = int(row["head"])
        self.newest = row["newest"]
        for event_row in row["events"] or ():
            event = row_to_event(event_row)
            self.events[event.event_id] = event
        for stream_row in row["streams"] or ():
            self.streams[stream_row[0]] = StreamHead(stream_row[1], stream_row[2])
        for doc_row in row["docs"] or ():
            doc = row_to_doc(doc_row)
            self.docs[(doc.kind, doc.key)] = doc
        for snap_row in row["snapshots"] or ():
            self.snapshots[(snap_row[0], snap_row[1])] = snap_row[2]
        self.asked_docs.update(docs)
        self.asked_snapshots.update(series)

    async def answer(self, conn: asyncpg.Connection, unknown: Unknown) -> None:
        if unknown.what == "doc":
            await self.read(conn, docs=[unknown.ident])
        elif unknown.what == "snapshot":
            await self.read(conn, series=[unknown.ident])
        else:  # event ids: the planner asks only when it plans optimistic (the caller reads)
            raise AssertionError(f"unexpected question {unknown.what}")


class PostgresWriter:
    """The writer connection and what runs on it, one batch at a time."""

    def __init__(
        self,
        projections: Sequence[Projection],
        snapshot_every: int,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
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
        #: batches written in one round trip, and those that took the sure path
        self.planned_on_known = 0
        self.read_under_lock = 0

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
        self, batch: list[Pending]
    ) -> tuple[list[Outcome], list[list[RecordedEvent]]]:
        """Outcomes in batch order and the committed events as contiguous runs."""
        try:
            plan = await self._write_on_known(batch)
        except BaseException:
            self.known.forget()  # committed or not: unknown
            raise
        if plan is not None:
            return plan.outcomes, [plan.records] if plan.records else []
        try:  # event ids not looked up: a retried one is rare, and UNIQUE refuses it
            plan = await self._write_once(batch, optimistic=True)
            return plan.outcomes, [plan.records] if plan.records else []
        except Rejected:
            pass
        try:  # every id looked up
            plan = await self._write_once(batch, optimistic=False)
            return plan.outcomes, [plan.records] if plan.records else []
        except Rejected as exc:
            if len(batch) == 1:
                return [ValidationFailed(f"append rejected by the store: {exc}")], []
        # one caller per transaction, so the one the database refuses fails alone
        outcomes: list[Outcome] = []
        runs: list[list[RecordedEvent]] = []
        for pending in batch:
            try:
                plan = await self._write_once([pending], optimistic=False)
            except Rejected as exc:
                outcomes.append(ValidationFailed(f"append rejected by the store: {exc}"))
                continue
            outcomes.extend(plan.outcomes)
            if plan.records:
                runs.append(plan.records)
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
        args = sql.write_batch_args(
            plan.records, plan.streams, plan.docs, plan.snapshots, plan.head, self.channel
        )
        conn = await self.connection()
        try:
            found = await conn.fetchval(sql.WRITE_BATCH_AT_HEAD, *args, known.head)
        except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError):
            known.forget()
            return None
        if found != known.head:
            known.forget()
            return None
        self.planned_on_known += 1
        known.wrote(plan)
        return plan

    async def _write_once(self, batch: Sequence[Pending], *, optimistic: bool) -> BatchPlan:
        conn = await self.connection()
        self.read_under_lock += 1
        try:
            await conn.execute(sql.LOCK_HEAD)
            plan = await self._plan(conn, batch, optimistic)
            if plan.records:
                args = sql.write_batch_args(
                    plan.records, plan.streams, plan.docs, plan.snapshots, plan.head, self.channel
                )
                try:
                    await conn.execute(sql.WRITE_BATCH, *args)
                except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                    await conn.execute("ROLLBACK")
                    raise Rejected(str(exc)) from exc
            await conn.execute("COMMIT")
        except BaseException:
            self.known.forget()
            if not conn.is_closed() and conn.is_in_transaction():
                try:
                    await asyncio.shield(conn.execute("ROLLBACK"))
                except Exception:
                    conn.terminate()
            raise
        self.known.wrote(plan)
        return plan

    async def _plan(
        self, conn: asyncpg.Connection, batch: Sequence[Pending], optimistic: bool
    ) -> BatchPlan:
        at = utc_now()
        ids: set[str] = set()
        streams: set[str] = set()
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
        await facts.read(conn, ids, streams, self._doc_keys(probes), self.policy.series(probes))
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
                    await facts.read(conn, ids=asked)
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
        return planner.plan()

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

    async def refold(self, conn: asyncpg.Connection) -> int:
        """Fold the whole log into emptied read-model tables, stream by stream
        (``StreamFold``: one page and one stream's documents in memory); returns
        the events folded."""
        fold = StreamFold(self.projections, self.snapshot_every)
        count = 0
        mark: tuple[str, int] = ("", 0)
        query = (
            "WITH sized AS (SELECT position, stream_id, version, "
            "octet_length(data) + octet_length(metadata) AS size FROM events "
            "WHERE (stream_id, version) > ($1, $2) ORDER BY stream_id, version LIMIT $3), "
            "running AS (SELECT position, SUM(size) OVER (ORDER BY stream_id, version) "
            "AS total, ROW_NUMBER() OVER (ORDER BY stream_id, version) AS n FROM sized) "
            f"SELECT {sql.EVENT_COLUMNS} FROM events WHERE position IN "
            "(SELECT position FROM running WHERE n = 1 OR total <= $4) "
            "ORDER BY stream_id, version"
        )  # a page ends at REBUILD_PAGE events or REBUILD_BYTES of stored JSON
        while True:
            # a page may end mid-stream, so its bound is its last row; the empty page at
            # the end takes the packed deltas after the last stream's last row
            rows = await conn.fetch(query, *mark, REBUILD_PAGE, REBUILD_BYTES)
            events = await with_packs(conn, [row_to_event(r) for r in rows], mark, bool(rows))
            if not events:
                break
            await self._write_docs(conn, *fold.feed(events))
            count += len(events)
            mark = (events[-1].stream_id, events[-1].version)
        await self._write_docs(conn, *fold.finish())
        return count

    @staticmethod
    async def _write_docs(
        conn: asyncpg.Connection, docs: list[Doc], snapshots: list[Snapshot]
    ) -> None:
        if docs or snapshots:
            await conn.execute(
                sql.WRITE_DOCS, *sql.doc_arrays(docs), *sql.snapshot_arrays(snapshots)
            )
