"""The PostgreSQL store's reads, on a connection pool.

Every read sees committed data, so a read on any node after a successful
write on any node sees it. There is no document cache: another node may have
written since.

A read that storage refuses for now (a failover: the host gone, frozen or
demoted) waits and is tried again, within the store's storage wait
(``eventstore/storagewait.py``); reads are idempotent, so trying again is
always safe. A connection that timed out or lost its host makes the whole
pool start over: the pool's other connections are to the same host, and
each would otherwise cost a request a statement timeout of its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg

from sessionstream.core.errors import StorageUnavailable
from sessionstream.eventstore.model import (
    Doc,
    RecordedEvent,
    StoredEvent,
    row_to_doc,
    row_to_event,
)
from sessionstream.eventstore.postgres.again import durable_head
from sessionstream.eventstore.postgres.connect import on_standby
from sessionstream.eventstore.postgres.errors import (
    DRIVER_ERRORS,
    broken,
    transient,
    translate_pg_error,
)
from sessionstream.eventstore.postgres.schema import DOC_COLUMNS, EVENT_COLUMNS, POSITION_AT
from sessionstream.eventstore.storagewait import StorageWait

#: the position in a read by keys (a session's and its runs' events), as an expression the
#: primary key's index cannot seek: the keys' indexes find the rows. Once asyncpg's
#: prepared statement turned generic (its sixth run on a connection), PostgreSQL guessed
#: 0.5% of the log between two parameters and walked the primary key from ``after``,
#: filtering every later event: 61 ms, 139,806 rows dropped, for a session in the
#: middle of a 10^6 log, against 1.7 ms by the keys' indexes (docs/explanation/scale.md)
KEYED_POSITION = "(position + 0)"


def budgeted_docs(listing: str, budget: str) -> str:
    """A docs listing (``SELECT DOC_COLUMNS FROM docs ...`` ordered and limited) cut
    before its bodies pass the byte budget ``budget`` (a parameter): the listing runs
    on sizes only (``octet_length`` of a TOASTed body reads no body), then just the
    documents inside the budget are fetched."""
    head = f"SELECT {DOC_COLUMNS} FROM docs"
    assert listing.startswith(head), listing
    sized = "SELECT kind, key, created_at, octet_length(body) AS size FROM docs"
    order = "ORDER BY created_at NULLS FIRST, key"
    return (
        f"WITH listed AS ({sized}{listing[len(head) :]}), "
        f"running AS (SELECT kind, key, SUM(size) OVER ({order}) AS total, "
        f"ROW_NUMBER() OVER ({order}) AS n FROM listed) "
        f"{head} WHERE (kind, key) IN "
        f"(SELECT kind, key FROM running WHERE n = 1 OR total <= {budget}) {order}"
    )


async def keep_session(_conn: asyncpg.Connection) -> None:
    """The readers' pool ``reset``: nothing beyond asyncpg's own rollback of an open
    transaction. Readers leave no session state (no ``LISTEN``, session ``SET``,
    advisory lock or cursor outside a transaction), and the default reset was a
    round trip of four statements on every release: measured, ~15% of a node's
    CPU when it streamed to websockets (docs/explanation/fanout.md)."""


class PostgresReader:
    """The read half of the store contract (and the queries others need), on a pool."""

    def __init__(
        self,
        *,
        acquire_timeout_s: float = 5.0,
        writes_work: Callable[[], bool] | None = None,
        wait: StorageWait | None = None,
    ) -> None:
        self.pool: asyncpg.Pool | None = None
        #: how reads wait out an outage (none: a refused read fails at once)
        self.wait = wait or StorageWait(0.0, 0)
        #: how long a read waits for a pooled connection (a new one included)
        self.acquire_timeout_s = acquire_timeout_s
        #: whether the primary takes writes, when reads may fall back to a standby (a
        #: standby connection is then let go); None: reads never do
        self.writes_work = writes_work

    def require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise StorageUnavailable("the event store is not open")
        return self.pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, within the acquire timeout; one a driver error may have
        left broken is closed, never handed out again; every driver error translated."""
        try:
            async with self.require_pool().acquire(timeout=self.acquire_timeout_s) as conn:
                try:
                    yield conn
                except DRIVER_ERRORS as exc:
                    if broken(exc):
                        # the pool opens a new one in its place; a connection the driver
                        # saw die is already back in the pool, and terminating it again
                        # would raise over the error that says what happened
                        with contextlib.suppress(asyncpg.InterfaceError):
                            conn.terminate()
                        if transient(exc) and self.pool is not None:
                            await self.pool.expire_connections()  # the rest: that host too
                    raise
                if self.writes_work is not None and on_standby(conn) and self.writes_work():
                    # read from a standby while no primary answered: once writes work
                    # again, reads go back to the primary (and see every commit)
                    conn.terminate()
        except DRIVER_ERRORS as exc:
            raise translate_pg_error(exc) from exc

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        async def once() -> list[Any]:
            async with self.connection() as conn:
                return list(await conn.fetch(query, *args))

        return await self.wait.patiently(once, transient)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async def once() -> Any:
            async with self.connection() as conn:
                return await conn.fetchval(query, *args)

        return await self.wait.patiently(once, transient)

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
        return [row_to_event(r) for r in await self.fetch(query, *args)]

    async def read_all(
        self,
        after_position: int = 0,
        *,
        limit: int = 1000,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        at = "position" if keys is None else KEYED_POSITION
        query = f"SELECT {EVENT_COLUMNS} FROM events WHERE {at} > $1"
        args: list[Any] = [after_position]
        if keys is not None:
            if not keys:
                return []
            args.append(list(keys))
            query += f" AND (stream_id = ANY(${len(args)}) OR correlation_id = ANY(${len(args)}))"
        if to_position is not None:
            args.append(to_position)
            query += f" AND {at} <= ${len(args)}"
        args.append(limit)
        query += f" ORDER BY position LIMIT ${len(args)}"
        return [row_to_event(r) for r in await self.fetch(query, *args)]

    async def read_by_stream(
        self,
        after: tuple[str, int] = ("", 0),
        *,
        limit: int = 1000,
        to_position: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RecordedEvent]:
        # a row comparison: a seek on the UNIQUE (stream_id, version) index ("C" collation)
        where = "(stream_id, version) > ($1, $2)"
        args: list[Any] = [after[0], after[1]]
        if to_position is not None:
            args.append(to_position)
            where += f" AND position <= ${len(args)}"
        args.append(limit)
        if max_bytes is None:
            query = (
                f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} "
                f"ORDER BY stream_id, version LIMIT ${len(args)}"
            )
        else:  # the sizes summed first, as read_page does, then only the rows inside
            args.append(max_bytes)
            query = (
                "WITH sized AS (SELECT position, stream_id, version, "
                f"octet_length(data) + octet_length(metadata) AS size FROM events WHERE {where} "
                f"ORDER BY stream_id, version LIMIT ${len(args) - 1}), "
                "running AS (SELECT position, SUM(size) OVER (ORDER BY stream_id, version) "
                "AS total, ROW_NUMBER() OVER (ORDER BY stream_id, version) AS n FROM sized) "
                f"SELECT {EVENT_COLUMNS} FROM events WHERE position IN "
                f"(SELECT position FROM running WHERE n = 1 OR total <= ${len(args)}) "
                "ORDER BY stream_id, version"
            )
        return [row_to_event(r) for r in await self.fetch(query, *args)]

    async def read_page(
        self,
        after_position: int,
        *,
        max_rows: int,
        max_bytes: int,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[StoredEvent]:
        """See ``EventStore.read_page``: sizes first (``octet_length`` reads a TOASTed
        value's size without fetching it), then only the rows inside the budget."""
        args: list[Any] = [after_position]
        at = "position" if keys is None else KEYED_POSITION
        where = f"{at} > $1"
        if keys is not None:
            if not keys:
                return []
            args.append(list(keys))
            where += f" AND (stream_id = ANY(${len(args)}) OR correlation_id = ANY(${len(args)}))"
        if to_position is not None:
            args.append(to_position)
            where += f" AND {at} <= ${len(args)}"
        args.extend((max_rows, max_bytes))
        query = (
            "WITH sized AS (SELECT position, octet_length(data) + octet_length(metadata) AS size "
            f"FROM events WHERE {where} ORDER BY position LIMIT ${len(args) - 1}), "
            "running AS (SELECT position, SUM(size) OVER (ORDER BY position) AS total, "
            "ROW_NUMBER() OVER (ORDER BY position) AS n FROM sized) "
            f"SELECT {EVENT_COLUMNS} FROM events WHERE position IN "
            f"(SELECT position FROM running WHERE n = 1 OR total <= ${len(args)}) "
            "ORDER BY position"
        )
        return [StoredEvent.from_row(r) for r in await self.fetch(query, *args)]

    async def head_position(self) -> int:
        return int(await self.fetchval("SELECT head FROM log_head WHERE id = 1"))

    async def durable_head(self) -> int:
        """The head, once every commit up to it is on the synchronous standby if there is
        one (``again.py``): what may be published without being taken back."""

        async def once() -> int:
            async with self.connection() as conn:
                return await durable_head(conn)

        return await self.wait.patiently(once, transient)

    async def stream_version(self, stream_id: str) -> int:
        value = await self.fetchval("SELECT version FROM streams WHERE stream_id = $1", stream_id)
        return int(value or 0)

    async def position_of(self, stream_id: str, version: int) -> int | None:
        value = await self.fetchval(
            "SELECT position FROM events WHERE stream_id = $1 AND version = $2", stream_id, version
        )
        return None if value is None else int(value)

    async def position_at(self, timestamp: str) -> int:
        value = await self.fetchval(POSITION_AT, timestamp)  # a seek: eventstore/clock.py
        return int(value)

    async def get_doc(self, kind: str, key: str) -> Doc | None:
        rows = await self.fetch(
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
        after: tuple[str, str] | None = None,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[Doc]:
        query = f"SELECT {DOC_COLUMNS} FROM docs WHERE kind = $1"
        args: list[Any] = [kind]
        for column, value in (("owner", owner), ("parent", parent), ("active", active)):
            if value is not None:
                args.append(value)
                query += f" AND {column} = ${len(args)}"
        if not include_deleted:
            query += " AND NOT deleted"
        if after is not None:
            args.extend(after)
            query += f" AND (created_at, key) > (${len(args) - 1}, ${len(args)})"
        query += " ORDER BY created_at NULLS FIRST, key"
        if limit is not None:
            args.append(limit)
            query += f" LIMIT ${len(args)}"
        if limit is not None and max_bytes is not None:
            args.append(max_bytes)
            query = budgeted_docs(query, f"${len(args)}")
        return [row_to_doc(r) for r in await self.fetch(query, *args)]

    async def scan_docs(
        self, kind: str, *, after: str | None = None, limit: int = 100
    ) -> list[Doc]:
        query = f"SELECT {DOC_COLUMNS} FROM docs WHERE kind = $1"
        args: list[Any] = [kind]
        if after is not None:
            args.append(after)
            query += f" AND key > ${len(args)}"
        args.append(limit)
        query += f" ORDER BY key LIMIT ${len(args)}"
        return [row_to_doc(r) for r in await self.fetch(query, *args)]

    async def latest_snapshot(
        self, stream_id: str, kind: str, *, max_position: int | None = None
    ) -> tuple[int, int, dict[str, Any]] | None:
        query = "SELECT version, position, state FROM snapshots WHERE stream_id = $1 AND kind = $2"
        args: list[Any] = [stream_id, kind]
        if max_position is not None:
            args.append(max_position)
            query += f" AND position <= ${len(args)}"
        query += " ORDER BY version DESC LIMIT 1"
        rows = await self.fetch(query, *args)
        if not rows:
            return None
        return int(rows[0][0]), int(rows[0][1]), json.loads(rows[0][2])
