"""The SQLite store's reads: a few aiosqlite connections beside the writer's.

WAL lets readers run while the writer writes; each query executes and fetches
in one thread hop (see :meth:`SQLiteReader._fetchall`). Documents the writer
just committed are served from the event loop's :class:`DocCache` without a
hop at all.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from sessionstream.core.errors import StorageUnavailable
from sessionstream.eventstore.model import (
    Doc,
    RecordedEvent,
    StoredEvent,
    row_to_doc,
    row_to_event,
)
from sessionstream.eventstore.sqlite.cache import DocCache
from sessionstream.eventstore.sqlite.schema import (
    DOC_COLUMNS,
    EVENT_COLUMNS,
    POSITION_AT,
    STREAM_HEAD,
    translate_sqlite_error,
)
from sessionstream.eventstore.textcodec import size_sql


def budgeted_docs(listing: str) -> str:
    """A docs listing (``SELECT DOC_COLUMNS FROM docs ...`` ordered and limited) cut
    before its bodies pass a byte budget, bound as the last parameter: the listing
    runs on sizes only, then just the documents inside the budget are fetched, each
    by its rowid (one seek of the table, not of the ``(kind, key)`` index and then it)."""
    head = f"SELECT {DOC_COLUMNS} FROM docs"
    assert listing.startswith(head), listing
    size = size_sql("body")
    sized = f"SELECT rowid AS id, created_at, key, {size} AS size FROM docs" + listing[len(head) :]
    columns = ", ".join(f"docs.{c.strip()}" for c in DOC_COLUMNS.split(","))
    return (
        f"WITH listed AS ({sized}), "
        "running AS (SELECT id, SUM(size) OVER w AS total, ROW_NUMBER() OVER w AS n "
        "FROM listed WINDOW w AS (ORDER BY created_at, key)) "
        f"SELECT {columns} FROM running JOIN docs ON docs.rowid = running.id "
        "WHERE n = 1 OR total <= ? ORDER BY n"
    )


class SQLiteReader:
    """The read half of the store contract, on read-only connections (event loop only)."""

    def __init__(self, path: str, *, connections: int, cache_size: int) -> None:
        self.path = path
        self.connections = connections
        #: documents recently written by this process (``DocCache``)
        self.cache = DocCache(cache_size)
        self._conns: list[aiosqlite.Connection] = []
        self._next = 0

    async def open(self) -> None:
        for _ in range(self.connections):
            conn = await aiosqlite.connect(self.path)
            self._conns.append(conn)
            await conn.execute("PRAGMA busy_timeout=5000")
            await conn.execute("PRAGMA query_only=1")

    async def close(self) -> None:
        for conn in self._conns:
            await conn.close()
        self._conns.clear()

    def _conn(self) -> aiosqlite.Connection:
        if not self._conns:
            raise StorageUnavailable("the event store is not open")
        self._next = (self._next + 1) % len(self._conns)
        return self._conns[self._next]

    async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        # Execute and fetch in one thread hop. A statement left open between two
        # hops holds its read snapshot, and another query started on the same
        # connection meanwhile shares that (older) snapshot: it could miss an
        # append acknowledged just before it, breaking read-after-write.
        try:
            return list(await self._conn().execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc) from exc

    async def rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Any query's rows (the packs beside the log: ``store.py``)."""
        return await self._fetchall(sql, params)

    async def read_stream(
        self,
        stream_id: str,
        after_version: int = 0,
        *,
        limit: int | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND version > ?"
        params: list[Any] = [stream_id, after_version]
        if to_position is not None:
            sql += " AND position <= ?"
            params.append(to_position)
        sql += " ORDER BY version"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [row_to_event(r) for r in await self._fetchall(sql, params)]

    async def read_all(
        self,
        after_position: int = 0,
        *,
        limit: int = 1000,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ?"
        params: list[Any] = [after_position]
        if keys is not None:
            if not keys:
                return []
            marks = ",".join("?" * len(keys))
            sql += f" AND (stream_id IN ({marks}) OR correlation_id IN ({marks}))"
            params.extend(keys)
            params.extend(keys)
        if to_position is not None:
            sql += " AND position <= ?"
            params.append(to_position)
        sql += " ORDER BY position LIMIT ?"
        params.append(limit)
        return [row_to_event(r) for r in await self._fetchall(sql, params)]

    async def read_page(
        self,
        after_position: int,
        *,
        max_rows: int,
        max_bytes: int,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[StoredEvent]:
        """See ``EventStore.read_page``. One statement, so one snapshot and one thread hop.

        A recursive walk takes the matching rows one at a time in position order,
        summing their sizes, and stops at the first row past the budget: only the
        page's rows (and one more) are ever sized, never the rest of the history
        (SQLite's ``length`` reads a text value whole, so sizing every remaining
        row made each catch-up page cost the whole history after it). Then just
        the rows inside the budget are fetched, their data left unparsed.
        """
        match = ""
        keyed: list[Any] = []
        if keys is not None:
            if not keys:
                return []
            marks = ",".join("?" * len(keys))
            match += f" AND (stream_id IN ({marks}) OR correlation_id IN ({marks}))"
            keyed.extend(keys)
            keyed.extend(keys)
        if to_position is not None:
            match += " AND position <= ?"
            keyed.append(to_position)
        size = f"{size_sql('data')} + {size_sql('metadata')}"
        sql = (
            "WITH RECURSIVE walk(position, total, n) AS ("
            f"SELECT position, {size}, 1 FROM "
            f"(SELECT position, data, metadata FROM events WHERE position > ?{match} "
            "ORDER BY position LIMIT 1) "
            f"UNION ALL SELECT e.position, walk.total + {size_sql('e.data')} + "
            f"{size_sql('e.metadata')}, "
            "walk.n + 1 FROM walk JOIN events e ON e.position = "
            f"(SELECT position FROM events WHERE position > walk.position{match} "
            "ORDER BY position LIMIT 1) "
            "WHERE walk.total <= ? AND walk.n < ?) "
            f"SELECT {EVENT_COLUMNS} FROM events WHERE position IN "
            "(SELECT position FROM walk WHERE n = 1 OR total <= ?) ORDER BY position"
        )
        params: list[Any] = [after_position, *keyed, *keyed, max_bytes, max_rows, max_bytes]
        return [StoredEvent.from_row(r) for r in await self._fetchall(sql, params)]

    async def read_by_stream(
        self,
        after: tuple[str, int] = ("", 0),
        *,
        limit: int = 1000,
        to_position: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RecordedEvent]:
        # a row value: SQLite seeks the UNIQUE (stream_id, version) index to the mark
        where = "(stream_id, version) > (?, ?)"
        params: list[Any] = [after[0], after[1]]
        if to_position is not None:
            where += " AND position <= ?"
            params.append(to_position)
        params.append(limit)
        if max_bytes is None:
            sql = (
                f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} "
                "ORDER BY stream_id, version LIMIT ?"
            )
        else:  # the sizes summed first, as read_page does, then only the rows inside
            params.append(max_bytes)
            sql = (
                "WITH sized AS (SELECT position, stream_id, version, "
                f"{size_sql('data')} + {size_sql('metadata')} AS size FROM events WHERE {where} "
                "ORDER BY stream_id, version LIMIT ?), "
                "running AS (SELECT position, SUM(size) OVER (ORDER BY stream_id, version) "
                "AS total, ROW_NUMBER() OVER (ORDER BY stream_id, version) AS n FROM sized) "
                f"SELECT {EVENT_COLUMNS} FROM events WHERE position IN "
                "(SELECT position FROM running WHERE n = 1 OR total <= ?) "
                "ORDER BY stream_id, version"
            )
        return [row_to_event(r) for r in await self._fetchall(sql, params)]

    async def head_position(self) -> int:
        rows = await self._fetchall("SELECT COALESCE(MAX(position), 0) FROM events", ())
        return int(rows[0][0])

    async def stream_version(self, stream_id: str) -> int:
        rows = await self._fetchall(STREAM_HEAD, (stream_id,))
        return int(rows[0][0]) if rows else 0

    async def position_of(self, stream_id: str, version: int) -> int | None:
        rows = await self._fetchall(
            "SELECT position FROM events WHERE stream_id = ? AND version = ?",
            (stream_id, version),
        )
        return int(rows[0][0]) if rows else None

    async def position_at(self, timestamp: str) -> int:
        rows = await self._fetchall(POSITION_AT, (timestamp,))  # a seek: eventstore/clock.py
        return int(rows[0][0])

    async def get_doc(self, kind: str, key: str) -> Doc | None:
        cached = self.cache.get((kind, key))
        if cached is not None:
            return cached
        epoch = self.cache.epoch
        rows = await self._fetchall(
            f"SELECT {DOC_COLUMNS} FROM docs WHERE kind = ? AND key = ?", (kind, key)
        )
        if not rows:
            return None
        doc = row_to_doc(rows[0])
        self.cache.put_read(doc, epoch)
        return doc

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
        sql = f"SELECT {DOC_COLUMNS} FROM docs WHERE kind = ?"
        params: list[Any] = [kind]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        if parent is not None:
            sql += " AND parent = ?"
            params.append(parent)
        if active is not None:
            sql += " AND active = ?"
            params.append(int(active))
        if not include_deleted:
            sql += " AND deleted = 0"
        if after is not None:
            # a row value: SQLite seeks ``docs_listing`` to the mark
            sql += " AND (created_at, key) > (?, ?)"
            params.extend(after)
        sql += " ORDER BY created_at, key"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        if limit is not None and max_bytes is not None:
            sql = budgeted_docs(sql)
            params.append(max_bytes)
        return [row_to_doc(r) for r in await self._fetchall(sql, params)]

    async def scan_docs(
        self, kind: str, *, after: str | None = None, limit: int = 100
    ) -> list[Doc]:
        sql = f"SELECT {DOC_COLUMNS} FROM docs WHERE kind = ?"
        params: list[Any] = [kind]
        if after is not None:
            sql += " AND key > ?"
            params.append(after)
        sql += " ORDER BY key LIMIT ?"
        params.append(limit)
        return [row_to_doc(r) for r in await self._fetchall(sql, params)]

    async def latest_snapshot(
        self, stream_id: str, kind: str, *, max_position: int | None = None
    ) -> tuple[int, int, dict[str, Any]] | None:
        sql = "SELECT version, position, state FROM snapshots WHERE stream_id = ? AND kind = ?"
        params: list[Any] = [stream_id, kind]
        if max_position is not None:
            sql += " AND position <= ?"
            params.append(max_position)
        sql += " ORDER BY version DESC LIMIT 1"
        rows = await self._fetchall(sql, params)
        if not rows:
            return None
        return int(rows[0][0]), int(rows[0][1]), json.loads(rows[0][2])
