"""PostgreSQL backend: several nodes, one log, the same contract as SQLite.

Writes. One writer task per process group-commits whatever append requests
are queued, as the SQLite backend does; ``writer.py`` decides and writes each
batch in one transaction under the cluster-wide ``log_head`` lock, which
makes positions gapless and in commit order: a reader that sees position *n*
has seen every position before it, which is what makes tailing by position
safe. Reads (``reader.py``) use a pool and see committed data.

Streaming. After each commit the new head is ``NOTIFY``-ed. One pump task per
process (``pump.py``) publishes to the local hub, in position order with no
gaps, whatever committed anywhere: events committed by this process are
handed to it directly, everything else is read from the log when a
notification (or the one-second safety poll) says the head moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from sessionstream.core.errors import (
    OutcomeUnknown,
    RetryLater,
    SessionStreamError,
    StorageUnavailable,
)
from sessionstream.eventstore.base import DEFAULT_CATCHUP_READS, DEFAULT_PAGE_BYTES, EventStore
from sessionstream.eventstore.compaction import to_compact
from sessionstream.eventstore.delegated_reads import DelegatedReads
from sessionstream.eventstore.groupcommit import Outcome, Pending
from sessionstream.eventstore.leases import lock_bounds
from sessionstream.eventstore.model import (
    AppendRequest,
    AppendResult,
    RecordedEvent,
)
from sessionstream.eventstore.packed_reads import PackedReads
from sessionstream.eventstore.postgres import schema as sql
from sessionstream.eventstore.postgres.connect import (
    asks_for_primary,
    connect,
    first_schema,
    primary_attrs,
    writable_host_problem,
)
from sessionstream.eventstore.postgres.errors import (
    DRIVER_ERRORS,
    broken,
    transient,
    translate_pg_error,
)
from sessionstream.eventstore.postgres.leases import PostgresLeases
from sessionstream.eventstore.postgres.maintenance import PostgresMaintenance
from sessionstream.eventstore.postgres.packs import PostgresPacks
from sessionstream.eventstore.postgres.pump import LogPump
from sessionstream.eventstore.postgres.reader import PostgresReader, keep_session
from sessionstream.eventstore.postgres.tree import PostgresTree
from sessionstream.eventstore.postgres.writer import PostgresWriter
from sessionstream.eventstore.projector import Projection
from sessionstream.eventstore.storagewait import RETRY_AFTER_S, RETRY_MAX_S, StorageWait

log = logging.getLogger("sessionstream.eventstore.postgres")


class PostgresEventStore(
    PackedReads, PostgresLeases, DelegatedReads, PostgresMaintenance, EventStore
):
    delivery_tasks = ("pg-writer", "pg-pump")
    #: the rows half of every read (``PackedReads`` merges the packs in)
    _reader: PostgresReader

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
        page_bytes: int = DEFAULT_PAGE_BYTES,
        catchup_reads: int = DEFAULT_CATCHUP_READS,
        pool_size: int = 10,
        poll_interval_s: float = 1.0,
        connect_timeout_s: float = 2.0,
        statement_timeout_s: float = 5.0,
        standby_reads: bool = True,
        on_batch: Callable[[int, int], None] | None = None,
        compact_runs: bool = True,
        lease_ttl_s: float = 15.0,
        storage_wait_s: float = 0.0,
        max_storage_waiters: int = 1000,
        stop_in_append: str = "",
        **_sqlite_only: Any,  # readers, cache_size, busy_retries: meaningless here
    ) -> None:
        super().__init__(
            projections,
            max_queue=max_queue,
            max_batch=max_batch,
            max_pending=max_pending,
            page_bytes=page_bytes,
            catchup_reads=catchup_reads,
        )
        self.dsn = dsn
        self.schema = schema
        self.snapshot_every = snapshot_every
        self.pool_size = pool_size
        self.poll_interval_s = poll_interval_s
        #: how long one host may take to accept a connection before the next is tried
        self.connect_timeout_s = connect_timeout_s
        #: how long the head lock may be held, from the run lease (``eventstore/leases.py``)
        self.bounds = lock_bounds(lease_ttl_s)
        #: how long one statement (read or write) may take, in the client and the server:
        #: never longer than the head lock may be waited for
        self.statement_timeout_s = min(statement_timeout_s, self.bounds.statement_s)
        #: called after each batch with (callers answered, events appended)
        self.on_batch = on_batch
        #: pack a run's token deltas once it ends (``eventstore/packing.py``); False keeps rows
        self.compact_runs = compact_runs
        #: reads from a standby while no primary answers (``connect.py``)
        self.standby_reads = standby_reads
        #: how long requests wait out a storage outage, and how many may (``storagewait.py``)
        self.storage_wait_s = storage_wait_s
        self.max_storage_waiters = max_storage_waiters
        self.read_wait = StorageWait(storage_wait_s, max_storage_waiters)
        #: appends refused because too many waited for storage already
        self.waiters_refused = 0
        self._reader = PostgresReader(
            wait=self.read_wait,
            acquire_timeout_s=self.statement_timeout_s,
            writes_work=(lambda: self._write_failed is None)
            if standby_reads and asks_for_primary(dsn)
            else None,
        )
        #: the packs beside the log, read through the pool
        self.packs = PostgresPacks(self._reader.fetch)
        self.tree = PostgresTree(lambda: self._reader.pool)
        self._writer = PostgresWriter(
            self.projections,
            snapshot_every,
            lambda: self._connect("writer"),
            reserve_s=self.bounds.reserve_s,
            stop_file=stop_in_append,
        )
        self._lconn: asyncpg.Connection | None = None
        #: a head every commit up to which is on the synchronous standby (``_read_after``)
        self._durable_head = 0
        self._writer_task: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        #: a committed batch whose callers were not answered yet (see ``_writer_loop``)
        self._unanswered: tuple[list[Pending], list[Outcome]] | None = None
        self.pump = LogPump(self.hub, self._read_after, self._poll, poll_interval_s=poll_interval_s)
        self.hub.read_to_published = True  # the pump publishes only what is durable
        self._open = False
        self._closing = False
        #: why the last append batch failed and since when (monotonic); None once one commits
        self._write_failed: tuple[str, float] | None = None

    def known_head(self) -> int:
        """The head ``NOTIFY``, this node's commits and the poll told the pump of: it
        moves on while a stalled pump's published position does not."""
        return max(self.pump.target, self.hub.published_position)

    @property
    def channel(self) -> str:
        """The ``LISTEN``/``NOTIFY`` channel of this store's schema."""
        return self._writer.channel

    # lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        if self._open:
            return
        self._closing = False
        try:
            first = await connect(
                self.dsn,
                per_host_timeout_s=self.connect_timeout_s,
                target_session_attrs=primary_attrs(self.dsn),
            )
            try:
                if self.schema is None:
                    self.schema = await first_schema(first)
                ran = await sql.migrate(first, self.schema)
                if ran:
                    log.info("applied %d migration(s) to schema %s", ran, self.schema)
            finally:
                await first.close()
            self._writer.channel = sql.channel_for(self.schema)
            self._reader.pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                connect=functools.partial(
                    connect,
                    per_host_timeout_s=self.connect_timeout_s,
                    standby_ok=self.standby_reads,
                ),
                server_settings=self._settings("reader"),
                command_timeout=self.statement_timeout_s,
                reset=keep_session,
            )
            await self._writer.connection()
            await self._listen()
            head = await self._reader.head_position()
        except DRIVER_ERRORS as exc:
            await self._close_connections()
            raise translate_pg_error(exc) from exc
        self.hub.published_position = head
        self.pump.head_moved(head)  # a NOTIFY may have come in already
        self._writer_task = self.supervisor.spawn("pg-writer", self._writer_loop)
        self._pump_task = self.supervisor.spawn("pg-pump", self.pump.run)
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
        left = self.compactions.take_all()
        if left:
            await self.compact_quietly(left)
        for task in (self._writer_task, self._pump_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._writer_task = self._pump_task = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        with contextlib.suppress(Exception):
            await self._writer.close()
        if self._lconn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._lconn.close(), 5)
            self._lconn = None
        if self._reader.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader.pool.close(), 5)
            self._reader.pool = None

    def _settings(self, role: str) -> dict[str, str]:
        assert self.schema is not None
        return {
            "search_path": sql.quote_ident(self.schema),
            # which process holds what, in pg_stat_activity (operators, the pause tests)
            "application_name": f"sessionstream-{role}:{os.getpid()}",
            # a client that vanishes mid-transaction (a paused or partitioned node) must
            # not keep its locks until TCP notices: the server ends it within a lease;
            # the transactions that lock the head set a shorter bound (``_lock_head``)
            "idle_in_transaction_session_timeout": _ms(self.bounds.idle_s),
            # the server gives up on a statement the client has given up on
            "statement_timeout": _ms(self.statement_timeout_s),
            **(self._writer_settings() if role == "writer" else {}),
        }

    def _lock_head(self) -> str:
        """The head lock for a rebuild or import: the one transaction kind that holds it
        across round trips, so a paused node ends it after ``held_idle_s``."""
        return (
            f"SET LOCAL idle_in_transaction_session_timeout = '{_ms(self.bounds.held_idle_s)}'; "
            "SELECT head FROM log_head WHERE id = 1 FOR UPDATE"
        )

    def _writer_settings(self) -> dict[str, str]:
        """The writer's statements are keyed lookups and writes of one batch: never a
        sequential scan (the planner's small-table estimates pick them, at twice the
        batch's time with 100 appenders), and none, nor its wait for the head lock,
        outlives the bound (a cancelled write is a 503 the caller retries)."""
        return {
            "enable_seqscan": "off",
            "idle_in_transaction_session_timeout": _ms(self.bounds.held_idle_s),
            "statement_timeout": _ms(self.statement_timeout_s),
            "lock_timeout": _ms(self.statement_timeout_s),
        }

    async def _connect(self, role: str) -> asyncpg.Connection:
        return await connect(
            self.dsn,
            per_host_timeout_s=self.connect_timeout_s,
            target_session_attrs=primary_attrs(self.dsn),
            server_settings=self._settings(role),
            command_timeout=self.statement_timeout_s,
        )

    async def _listen(self) -> None:
        conn = await self._connect("listener")
        await conn.add_listener(self.channel, self._on_notify)
        self._lconn = conn

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.pump.head_moved(int(payload))

    async def _stale_projections(self, conn: asyncpg.Connection | None = None) -> list[str]:
        """Kinds whose projection version differs from the one the read models were built by."""
        query = "SELECT key, value FROM meta"
        rows = await (conn.fetch(query) if conn is not None else self._reader.fetch(query))
        stored = {r[0]: r[1] for r in rows}
        return [
            p.kind for p in self.projections if stored.get(f"projection:{p.kind}") != str(p.version)
        ]

    async def _read_after(self, position: int) -> list[RecordedEvent]:
        """Another node's events (and packs) for the pump, data left as stored, up to the
        durable head only: a commit whose wait for the synchronous standby was cut short
        is visible before it is durable, and a frame for it a phantom (``again.py``)."""
        if self._durable_head <= position:
            self._durable_head = await self._reader.durable_head()
            if self._durable_head <= position:
                return []
        page = await self.read_page(
            position, max_rows=1000, max_bytes=self.page_bytes, to_position=self._durable_head
        )
        return list(page)

    async def _poll(self) -> int:
        """The pump's safety net under NOTIFY: listen again if need be, read the head.

        A listener whose host froze or was demoted stays open but hears
        nothing, so it is asked a trivial question first, within the connect
        timeout; one that does not answer is dropped and opened again (on
        whichever host is the primary now).
        """
        lconn = self._lconn
        if lconn is not None and not lconn.is_closed():
            try:
                await lconn.execute("SELECT 1", timeout=self.connect_timeout_s)
            except DRIVER_ERRORS:
                lconn.terminate()
        if self._lconn is None or self._lconn.is_closed():
            self._lconn = None
            try:
                await self._listen()
            except DRIVER_ERRORS as exc:
                raise translate_pg_error(exc) from exc
        return await self._reader.head_position()

    # writes ---------------------------------------------------------------
    async def transact(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        if not self._open or self._closing:
            raise StorageUnavailable("the event store is not open")
        waiting = self.commits.waiting
        if self._write_failed is not None and waiting >= self.max_storage_waiters:
            # an outage: what is queued waits for storage, and only so many may
            self.waiters_refused += 1
            raise StorageUnavailable(
                f"storage is unavailable and {waiting} appends already wait for it; retry",
                retry_after=RETRY_AFTER_S,
            )
        return await self.commits.submit(requests)

    async def _writer_loop(self) -> None:
        """Group-commit forever; supervised, so a crash resumes here.

        A crash after a commit leaves that batch's callers unanswered: they
        get their outcomes first. Its events need no republishing: the pump
        reads whatever committed past the hub's position (``NOTIFY`` and its
        poll tell it the head moved).
        """
        commits = self.commits
        unanswered, self._unanswered = self._unanswered, None
        if unanswered is not None:
            commits.answer(*unanswered)
        while True:
            stream_id = self.compactions.next()
            if stream_id is not None:
                await self.compact_quietly([stream_id])
                continue
            batch = await commits.next_batch()
            try:
                outcomes, runs = await self._write_patiently(batch)
            except BaseException as exc:  # never leave a caller waiting
                error = self._given_up(exc)
                self._writer.sent.clear()  # answered: its sent plans are history
                commits.fail(batch, error)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self._writer.sent.clear()
            self._write_failed = None
            self._unanswered = (batch, outcomes)
            for run in runs:
                self.pump.committed(run)
            self._unanswered = None
            appended = commits.answer(batch, outcomes)
            if self.on_batch is not None:
                self.on_batch(len(batch), appended)
            if self.compact_runs:  # packed between batches, when no append waits
                self.compactions.add(s for run in runs for s in to_compact(run))

    async def _write_patiently(
        self, batch: list[Pending]
    ) -> tuple[list[Outcome], list[list[RecordedEvent]]]:
        """``batch`` written, tried again while storage refuses it for now (a failover)
        and has refused for less than the storage wait (``eventstore/storagewait.py``):
        its callers wait for the new primary instead of getting a 503. A try whose
        commit landed unanswered is not applied twice (``writer.py``)."""
        delay = 0.05
        again = False
        since: float | None = None
        while True:
            try:
                return await self._writer.write_batch(batch, again=again)
            except asyncio.CancelledError:
                self._drop_writer_connection()  # cut off mid-statement: never reused
                raise
            except Exception as exc:
                if not isinstance(exc, SessionStreamError):
                    log.warning("append batch failed: %r", exc)
                if broken(exc):  # open but mid-protocol, or to a demoted host: never reused
                    self._drop_writer_connection()
                message = translate_pg_error(exc).message
                now = time.monotonic()
                failed = self._write_failed
                if since is None:  # the outage's clock: from its first failed batch
                    since = now if failed is None else failed[1]
                self._write_failed = (message, since if failed is None else failed[1])
                left = since + self.storage_wait_s - now
                if self._closing or left <= 0 or not transient(exc):
                    raise
                again = True
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, RETRY_MAX_S)

    def _given_up(self, exc: BaseException) -> SessionStreamError:
        """What a batch's callers are told when its write is given up: ``outcome_unknown``
        if a write statement of it lost its answer (its commit may have landed, and no
        later try found out), else the error as translated."""
        error = translate_pg_error(exc)
        if self._writer.sent.lost:
            unknown = OutcomeUnknown(
                f"{error.message.removesuffix('; retry')}, while this write was committing, "
                "and whether it landed could not be read back: it may have been written; "
                "read it before you retry",
                retry_after=error.retry_after if isinstance(error, RetryLater) else 1.0,
            )
            unknown.__cause__ = exc
            return unknown
        return error

    async def write_trouble(self) -> str | None:
        """Why the last append failed, unless a writable host answers now: an idle node
        would otherwise report an outage long over until its next append."""
        failed = self._write_failed
        if failed is None:
            return None
        why = await writable_host_problem(self.dsn, self.connect_timeout_s)
        if why is not None:
            return f"{why} (writes failing for {time.monotonic() - failed[1]:.1f}s)"
        if self._write_failed is failed:
            self._write_failed = None
        return None

    def _drop_writer_connection(self) -> None:
        conn, self._writer.conn = self._writer.conn, None
        if conn is not None:
            conn.terminate()


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"
