"""PostgreSQL backend: several nodes, one log, the same contract as SQLite.

Writes. One writer task per process group-commits whatever append requests
are queued, as the SQLite backend does. A batch is one transaction of four
round trips whatever its size: lock the ``log_head`` row; read everything the
batch needs (stored event ids, stream heads, documents, snapshot marks) in one
query; write events, stream heads, documents, snapshots, the new head and the
``NOTIFY`` in one statement of array ``unnest``s; commit.

Every append on every node locks the same ``log_head`` row first, so appends
are serialised across the cluster and positions are handed out gapless and in
commit order: a reader that sees position *n* has seen every position before
it, which is what makes tailing by position safe. Because the lock is held
for the whole transaction, the state read after it is current, so each
request's outcome (idempotent duplicate, version conflict, records, hashes,
folded documents) is decided in Python exactly as the SQLite backend decides
it inside a savepoint: a failing request is dropped from the batch alone and
the others commit. The database's unique constraints stay as the backstop;
if they ever reject the batch, it is rolled back and retried one request per
transaction, so a bad request still fails alone.

Reads use a connection pool and see committed data, so a read on any node
after a successful write on any node sees it. There is no document cache:
another node may have written since.

Streaming. After each commit the new head is ``NOTIFY``-ed. One pump task per
process publishes to the local hub, in position order with no gaps, whatever
committed anywhere: events committed by this process are handed to it
directly, everything else is read from the log when a notification (or the
one-second safety poll) says the head moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import asyncpg

from sessionstream.core.errors import (
    SessionStreamError,
    StorageUnavailable,
    ValidationFailed,
)
from sessionstream.core.vocabulary import session_stream
from sessionstream.eventstore import pg_schema as sql
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.groupcommit import Pending
from sessionstream.eventstore.model import (
    AppendRequest,
    AppendResult,
    Doc,
    RecordedEvent,
    row_to_doc,
    row_to_event,
    utc_now,
)
from sessionstream.eventstore.pg_batch import (
    BatchPlan,
    BatchState,
    Ident,
    ImportPlanner,
    Miss,
    Outcome,
    Planner,
    doc_arrays,
    dumps,
    refold,
    snapshot_arrays,
)
from sessionstream.eventstore.pg_pump import LogPump
from sessionstream.eventstore.pg_schema import (
    DOC_COLUMNS,
    EVENT_COLUMNS,
    channel_for,
    migrate,
    quote_ident,
)
from sessionstream.eventstore.projector import Projection

log = logging.getLogger("sessionstream.eventstore.postgres")


def translate_pg_error(exc: BaseException) -> SessionStreamError:
    """A driver error as the one storage error callers handle (503)."""
    if isinstance(exc, SessionStreamError):
        return exc
    state = str(getattr(exc, "sqlstate", "") or "")
    if state == "53100":
        return StorageUnavailable("the database disk is full: nothing was written")
    if state == "25006":
        return StorageUnavailable("the database is read-only (a standby?): nothing was written")
    if state.startswith(("08", "57")) or isinstance(
        exc, OSError | TimeoutError | asyncpg.InterfaceError
    ):
        return StorageUnavailable(f"lost the PostgreSQL connection ({exc}); retry")
    if state.startswith("53"):
        return StorageUnavailable(f"PostgreSQL is out of resources ({exc}); retry")
    return StorageUnavailable(f"the database failed: {exc}")


class _Rejected(Exception):
    """The database refused a batch's writes (a constraint the plan did not foresee)."""


class PostgresEventStore(EventStore):
    def __init__(
        self,
        dsn: str,
        projections: Sequence[Projection] = (),
        *,
        schema: str | None = None,
        snapshot_every: int = 200,
        max_batch: int = 2000,
        max_pending: int = 10_000,
        max_queue: int = 1024,
        pool_size: int = 10,
        poll_interval_s: float = 1.0,
        command_timeout_s: float = 60.0,
        on_batch: Callable[[int, int], None] | None = None,
        **_sqlite_only: Any,  # readers, cache_size, busy_retries: meaningless here
    ) -> None:
        super().__init__(
            projections, max_queue=max_queue, max_batch=max_batch, max_pending=max_pending
        )
        self.dsn = dsn
        self.schema = schema
        self.snapshot_every = snapshot_every
        self.pool_size = pool_size
        self.poll_interval_s = poll_interval_s
        self.command_timeout_s = command_timeout_s
        self.on_batch = on_batch
        self.channel = ""
        self._pool: asyncpg.Pool | None = None
        self._wconn: asyncpg.Connection | None = None
        self._lconn: asyncpg.Connection | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self.pump = LogPump(self.hub, self._read_after, self._poll, poll_interval_s=poll_interval_s)
        self._open = False
        self._closing = False

    # lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        if self._open:
            return
        self._closing = False
        try:
            first = await asyncpg.connect(self.dsn, timeout=self.command_timeout_s)
            try:
                if self.schema is None:
                    self.schema = await _first_schema(first)
                ran = await migrate(first, self.schema)
                if ran:
                    log.info("applied %d migration(s) to schema %s", ran, self.schema)
            finally:
                await first.close()
            self.channel = channel_for(self.schema)
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                server_settings=self._settings("reader"),
                command_timeout=self.command_timeout_s,
            )
            self._wconn = await self._connect("writer")
            await self._listen()
            head = await self._fetchval("SELECT head FROM log_head WHERE id = 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            await self._close_connections()
            raise translate_pg_error(exc) from exc
        self.hub.published_position = int(head)
        self.pump.head_moved(int(head))  # a NOTIFY may have come in already
        self._writer_task = asyncio.create_task(self._writer_loop(), name="pg-writer")
        self._pump_task = asyncio.create_task(self.pump.run(), name="pg-pump")
        self._open = True
        try:
            if await self._stale_projections():
                count = await self._rebuild(only_if_stale=True)
                if count:  # a new, empty store has nothing to refold
                    log.info(
                        "projection versions changed: rebuilt read models from %d events", count
                    )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._closing = True
        await self.commits.drained()  # every queued append gets its answer first
        for task in (self._writer_task, self._pump_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer_task = self._pump_task = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        for conn in (self._lconn, self._wconn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)
        self._lconn = self._wconn = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)
            self._pool = None

    def _settings(self, role: str) -> dict[str, str]:
        assert self.schema is not None
        return {
            "search_path": quote_ident(self.schema),
            "application_name": f"sessionstream-{role}",
            # a client that vanishes mid-append (a partitioned node) must not keep
            # the cluster-wide log_head lock until TCP notices: the server ends it
            "idle_in_transaction_session_timeout": "10s",
        }

    async def _connect(self, role: str) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.dsn,
            server_settings=self._settings(role),
            command_timeout=self.command_timeout_s,
            timeout=self.command_timeout_s,
        )

    async def _listen(self) -> None:
        conn = await self._connect("listener")
        await conn.add_listener(self.channel, self._on_notify)
        self._lconn = conn

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.pump.head_moved(int(payload))

    async def _stale_projections(self) -> list[str]:
        rows = await self._fetch("SELECT key, value FROM meta")
        stored = {r[0]: r[1] for r in rows}
        return [
            p.kind for p in self.projections if stored.get(f"projection:{p.kind}") != str(p.version)
        ]

    # writes ---------------------------------------------------------------
    async def transact(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        if not self._open or self._closing:
            raise StorageUnavailable("the event store is not open")
        return await self.commits.submit(requests)

    async def _writer_loop(self) -> None:
        commits = self.commits
        while True:
            batch = await commits.next_batch()
            try:
                outcomes, runs = await self._write_batch(batch)
            except BaseException as exc:  # never leave a caller waiting
                if not isinstance(exc, SessionStreamError):
                    log.warning("append batch failed: %r", exc)
                commits.fail(batch, translate_pg_error(exc))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for run in runs:
                self.pump.committed(run)
            appended = commits.answer(batch, outcomes)
            if self.on_batch is not None:
                self.on_batch(len(batch), appended)

    async def _writer(self) -> asyncpg.Connection:
        conn = self._wconn
        if conn is None or conn.is_closed():
            self._wconn = None
            conn = self._wconn = await self._connect("writer")
        return conn

    async def _write_batch(
        self, batch: list[Pending]
    ) -> tuple[list[Outcome], list[list[RecordedEvent]]]:
        """Outcomes in batch order and the committed events as contiguous runs."""
        try:
            plan = await self._write_once(batch)
            return plan.outcomes, [plan.records] if plan.records else []
        except _Rejected as exc:
            if len(batch) == 1:
                return [ValidationFailed(f"append rejected by the store: {exc}")], []
        # one request per transaction, so the one the database refuses fails alone
        outcomes: list[Outcome] = []
        runs: list[list[RecordedEvent]] = []
        for item in batch:
            try:
                plan = await self._write_once([item])
            except _Rejected as exc:
                outcomes.append(ValidationFailed(f"append rejected by the store: {exc}"))
                continue
            outcomes.extend(plan.outcomes)
            if plan.records:
                runs.append(plan.records)
        return outcomes, runs

    async def _write_once(self, batch: Sequence[Pending]) -> BatchPlan:
        conn = await self._writer()
        try:
            await conn.execute(sql.LOCK_HEAD)
            plan = await self._plan(conn, batch)
            if plan.records:
                try:
                    await conn.execute(sql.WRITE_BATCH, *self._write_args(plan))
                except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                    await conn.execute("ROLLBACK")
                    raise _Rejected(str(exc)) from exc
            await conn.execute("COMMIT")
        except BaseException:
            if not conn.is_closed():
                if conn.is_in_transaction():
                    try:
                        await asyncio.shield(conn.execute("ROLLBACK"))
                    except Exception:
                        conn.terminate()
            raise
        return plan

    async def _plan(self, conn: asyncpg.Connection, batch: Sequence[Pending]) -> BatchPlan:
        now = utc_now()
        ids: set[str] = set()
        stream_ids: set[str] = set()
        doc_keys: set[Ident] = set()
        for item in batch:
            for request in item.requests:
                stream_ids.add(request.stream_id)
                for new in request.events:
                    ids.add(new.event_id)
                    probe = RecordedEvent(
                        0, request.stream_id, 0, new.event_id, new.type, new.data,
                        new.metadata, new.correlation_id, now, "",
                    )  # fmt: skip
                    for projection in self.projections:
                        key = projection.key(probe)
                        if key is not None:
                            doc_keys.add((projection.kind, key))
        state = BatchState(head=0)
        await self._prefetch(conn, state, ids, stream_ids, doc_keys, first=True)
        while True:
            try:
                return Planner(state, self.projections, self.snapshot_every).plan(
                    [item.requests for item in batch], now
                )
            except Miss as miss:  # a projection keyed an event differently than the probe
                if miss.what == "doc":
                    await self._prefetch(conn, state, set(), set(), {miss.ident})
                else:
                    await self._prefetch(conn, state, set(), set(), set(), {miss.ident})

    async def _prefetch(
        self,
        conn: asyncpg.Connection,
        state: BatchState,
        ids: set[str],
        stream_ids: set[str],
        doc_keys: set[Ident],
        snapshot_streams: set[str] | None = None,
        *,
        first: bool = False,
    ) -> None:
        if snapshot_streams is None:
            snapshot_streams = {session_stream(key) for kind, key in doc_keys if kind == "session"}
            if self.snapshot_every <= 0:
                snapshot_streams = set()
        keys = sorted(doc_keys)
        row = await conn.fetchrow(
            sql.READ_BATCH_STATE,
            list(ids),
            list(stream_ids),
            [k[0] for k in keys],
            [k[1] for k in keys],
            list(snapshot_streams),
        )
        assert row is not None
        if first:
            state.head = int(row["head"])
        for event_row in row["events"] or ():
            event = row_to_event(event_row)
            state.events[event.event_id] = event
        for stream_row in row["streams"] or ():
            state.streams[stream_row[0]] = (stream_row[1], stream_row[2])
        for doc_row in row["docs"] or ():
            doc = row_to_doc(doc_row)
            state.docs[(doc.kind, doc.key)] = doc
        for snap_row in row["snapshots"] or ():
            state.snapshots[snap_row[0]] = snap_row[1]
        state.asked_docs.update(doc_keys)
        state.asked_snapshots.update(snapshot_streams)

    def _write_args(self, plan: BatchPlan) -> list[Any]:
        records = plan.records
        streams = sorted(plan.streams.items())
        return [
            *doc_arrays(plan.docs),
            [r.position for r in records],
            [r.stream_id for r in records],
            [r.version for r in records],
            [r.event_id for r in records],
            [r.type for r in records],
            [dumps(r.data) for r in records],
            [dumps(r.metadata) for r in records],
            [r.correlation_id for r in records],
            [r.recorded_at for r in records],
            [r.hash for r in records],
            [s[0] for s in streams],
            [s[1][0] for s in streams],
            [s[1][1] for s in streams],
            *snapshot_arrays(list(plan.snapshots.values())),
            plan.head,
            self.channel,
        ]

    # import -----------------------------------------------------------------
    async def import_events(self, events: Sequence[RecordedEvent]) -> None:
        if not self._open or self._closing:
            raise StorageUnavailable("the event store is not open")
        if not events:
            return
        events = list(events)
        await self.commits.drained()  # appends already queued land first
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT head FROM log_head WHERE id = 1 FOR UPDATE")
                plan = await self._plan_import(conn, events)
                try:
                    await conn.execute(sql.WRITE_BATCH, *self._write_args(plan))
                except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
                    raise ValidationFailed(f"import rejected by the store: {exc}") from exc
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise translate_pg_error(exc) from exc
        self.pump.committed(events)

    async def _plan_import(
        self, conn: asyncpg.Connection, events: list[RecordedEvent]
    ) -> BatchPlan:
        doc_keys: set[Ident] = set()
        for event in events:
            for projection in self.projections:
                key = projection.key(event)
                if key is not None:
                    doc_keys.add((projection.kind, key))
        state = BatchState(head=0)
        ids = {e.event_id for e in events}
        await self._prefetch(conn, state, ids, {e.stream_id for e in events}, doc_keys, first=True)
        while True:
            try:
                return ImportPlanner(state, self.projections, self.snapshot_every).plan_import(
                    events
                )
            except Miss as miss:
                if miss.what == "doc":
                    await self._prefetch(conn, state, set(), set(), {miss.ident})
                else:
                    await self._prefetch(conn, state, set(), set(), set(), {miss.ident})

    async def _read_after(self, position: int) -> list[RecordedEvent]:
        return await self.read_all(position, limit=1000)

    async def _poll(self) -> int:
        """The pump's safety net under NOTIFY: listen again if need be, read the head."""
        if self._lconn is None or self._lconn.is_closed():
            self._lconn = None
            try:
                await self._listen()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                raise translate_pg_error(exc) from exc
        return await self.head_position()

    # rebuild ----------------------------------------------------------------
    async def rebuild(self) -> int:
        return await self._rebuild(only_if_stale=False)

    async def _rebuild(self, *, only_if_stale: bool) -> int:
        """Refold every read model under the head lock (appends wait meanwhile)."""
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT head FROM log_head WHERE id = 1 FOR UPDATE")
                if only_if_stale and not await self._stale_projections_on(conn):
                    return 0  # another node rebuilt while this one waited
                await conn.execute("DELETE FROM docs")
                await conn.execute("DELETE FROM snapshots")
                count: int = await refold(conn, self.projections, self.snapshot_every)
                await conn.execute(
                    sql.RECORD_META,
                    [f"projection:{p.kind}" for p in self.projections],
                    [str(p.version) for p in self.projections],
                )
                return count
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise translate_pg_error(exc) from exc

    async def _stale_projections_on(self, conn: asyncpg.Connection) -> bool:
        stored = {r[0]: r[1] for r in await conn.fetch("SELECT key, value FROM meta")}
        return any(stored.get(f"projection:{p.kind}") != str(p.version) for p in self.projections)

    # reads ----------------------------------------------------------------
    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageUnavailable("the event store is not open")
        return self._pool

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        pool = self._require_pool()
        try:
            return list(await pool.fetch(query, *args))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise translate_pg_error(exc) from exc

    async def _fetchval(self, query: str, *args: Any) -> Any:
        pool = self._require_pool()
        try:
            return await pool.fetchval(query, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise translate_pg_error(exc) from exc

    async def read_stream(
        self,
        stream_id: str,
        after_version: int = 0,
        *,
        limit: int | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        query = f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND version > $2"
        args: list[Any] = [stream_id, after_version]
        if to_position is not None:
            args.append(to_position)
            query += f" AND position <= ${len(args)}"
        query += " ORDER BY version"
        if limit is not None:
            args.append(limit)
            query += f" LIMIT ${len(args)}"
        return [row_to_event(r) for r in await self._fetch(query, *args)]

    async def read_all(
        self,
        after_position: int = 0,
        *,
        limit: int = 1000,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        query = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > $1"
        args: list[Any] = [after_position]
        if keys is not None:
            if not keys:
                return []
            args.append(list(keys))
            query += f" AND (stream_id = ANY(${len(args)}) OR correlation_id = ANY(${len(args)}))"
        if to_position is not None:
            args.append(to_position)
            query += f" AND position <= ${len(args)}"
        args.append(limit)
        query += f" ORDER BY position LIMIT ${len(args)}"
        return [row_to_event(r) for r in await self._fetch(query, *args)]

    async def iter_events(
        self, after: int = 0, *, page: int = 5000
    ) -> AsyncIterator[RecordedEvent]:
        """Every event in order, a page at a time (``verify`` and export)."""
        while True:
            events = await self.read_all(after, limit=page)
            for event in events:
                yield event
            if len(events) < page:
                return
            after = events[-1].position

    async def head_position(self) -> int:
        return int(await self._fetchval("SELECT head FROM log_head WHERE id = 1"))

    async def stream_version(self, stream_id: str) -> int:
        value = await self._fetchval("SELECT version FROM streams WHERE stream_id = $1", stream_id)
        return int(value or 0)

    async def position_of(self, stream_id: str, version: int) -> int | None:
        value = await self._fetchval(
            "SELECT position FROM events WHERE stream_id = $1 AND version = $2", stream_id, version
        )
        return None if value is None else int(value)

    async def position_at(self, timestamp: str) -> int:
        value = await self._fetchval(
            "SELECT COALESCE(MAX(position), 0) FROM events WHERE recorded_at <= $1", timestamp
        )
        return int(value)

    async def get_doc(self, kind: str, key: str) -> Doc | None:
        rows = await self._fetch(
            f"SELECT {DOC_COLUMNS} FROM docs WHERE kind = $1 AND key = $2", kind, key
        )
        return row_to_doc(rows[0]) if rows else None

    async def list_docs(
        self,
        kind: str,
        *,
        owner: str | None = None,
        parent: str | None = None,
        active: bool | None = None,
        include_deleted: bool = False,
    ) -> list[Doc]:
        query = f"SELECT {DOC_COLUMNS} FROM docs WHERE kind = $1"
        args: list[Any] = [kind]
        for column, value in (("owner", owner), ("parent", parent), ("active", active)):
            if value is not None:
                args.append(value)
                query += f" AND {column} = ${len(args)}"
        if not include_deleted:
            query += " AND NOT deleted"
        query += " ORDER BY created_at NULLS FIRST, key"
        return [row_to_doc(r) for r in await self._fetch(query, *args)]

    async def latest_snapshot(
        self, stream_id: str, kind: str, *, max_position: int | None = None
    ) -> tuple[int, int, dict[str, Any]] | None:
        query = "SELECT version, position, state FROM snapshots WHERE stream_id = $1 AND kind = $2"
        args: list[Any] = [stream_id, kind]
        if max_position is not None:
            args.append(max_position)
            query += f" AND position <= ${len(args)}"
        query += " ORDER BY version DESC LIMIT 1"
        rows = await self._fetch(query, *args)
        if not rows:
            return None
        return int(rows[0][0]), int(rows[0][1]), json.loads(rows[0][2])

    # leases (see eventstore/leases.py) -------------------------------------------
    async def acquire_lease(self, run_id: str, node_id: str, ttl_s: float) -> None:
        await self.renew_leases([run_id], node_id, ttl_s)

    async def renew_leases(self, run_ids: Sequence[str], node_id: str, ttl_s: float) -> None:
        if not run_ids:
            return
        await self._fetch(
            "INSERT INTO leases (run_id, node_id, expires_at) "
            "SELECT r, $2, now() + make_interval(secs => $3) FROM unnest($1::text[]) AS r "
            "ON CONFLICT (run_id) DO UPDATE SET node_id = excluded.node_id, "
            "expires_at = excluded.expires_at",
            list(run_ids),
            node_id,
            ttl_s,
        )

    async def release_lease(self, run_id: str) -> None:
        await self._fetch("DELETE FROM leases WHERE run_id = $1", run_id)

    async def expired_leases(self, runs: Mapping[str, str | None], grace_s: float) -> set[str]:
        if not runs:
            return set()
        ids = list(runs)
        rows = await self._fetch(
            "SELECT r.run_id FROM unnest($1::text[], $2::text[]) AS r(run_id, active_at) "
            "LEFT JOIN leases l ON l.run_id = r.run_id "
            "WHERE CASE WHEN l.run_id IS NULL "
            "THEN r.active_at IS NULL "
            "OR r.active_at::timestamptz < now() - make_interval(secs => $3) "
            "ELSE l.expires_at <= now() END",
            ids,
            [runs[i] for i in ids],
            grace_s,
        )
        return {r[0] for r in rows}

    async def lease_holders(self) -> dict[str, str]:
        """run id -> node id of every live lease (operators and tests)."""
        rows = await self._fetch("SELECT run_id, node_id FROM leases WHERE expires_at > now()")
        return {r[0]: r[1] for r in rows}


async def _first_schema(conn: asyncpg.Connection) -> str:
    """The schema the DSN points at (``?search_path=...``), else ``public``."""
    path = str(await conn.fetchval("SELECT current_setting('search_path')"))
    for entry in path.split(","):
        name = entry.strip()
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('""', '"')
        if name and name != "$user":
            return name
    return "public"
