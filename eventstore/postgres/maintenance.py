"""The store's whole-log work: import, rebuild and compaction, on connections of their own.

Kept out of ``store.py`` for size, as the lease methods (``leases.py``) and the
document reads (``reads.py``) are. Import and rebuild take the head lock for
the whole log in one transaction, so they run on a maintenance connection
without the statement timeout requests have.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Sequence

import asyncpg

from sessionstream.core.errors import StorageUnavailable
from sessionstream.eventstore.compaction import to_compact
from sessionstream.eventstore.groupcommit import GroupCommit
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.eventstore.postgres import schema as sql
from sessionstream.eventstore.postgres.connect import own_connection
from sessionstream.eventstore.postgres.packs import compact
from sessionstream.eventstore.postgres.pump import LogPump
from sessionstream.eventstore.postgres.reader import PostgresReader
from sessionstream.eventstore.postgres.writer import PostgresWriter
from sessionstream.eventstore.projector import Projection


class PostgresMaintenance(abc.ABC):
    """``import_events``, ``rebuild`` and ``compact`` of ``PostgresEventStore``."""

    _open: bool
    _closing: bool
    _reader: PostgresReader
    _writer: PostgresWriter
    commits: GroupCommit
    pump: LogPump
    compact_runs: bool
    projections: tuple[Projection, ...]
    #: an import chunk packed rows away: ``imported`` gives their space back
    _import_packed: bool = False
    dsn: str
    connect_timeout_s: float

    # the store's own, which this work shares with its appends and its connections
    @abc.abstractmethod
    def _lock_head(self) -> str: ...

    @abc.abstractmethod
    def _settings(self, role: str) -> dict[str, str]: ...

    @abc.abstractmethod
    async def _stale_projections(self, conn: asyncpg.Connection | None = None) -> list[str]: ...

    async def import_events(self, events: Sequence[RecordedEvent]) -> None:
        if not self._open or self._closing:
            raise StorageUnavailable("the event store is not open")
        if not events:
            return
        events = list(events)
        await self.commits.drained()  # appends already queued land first
        self._writer.forget()
        async with self._maintenance() as conn, conn.transaction():
            await conn.execute(self._lock_head())
            await self._writer.import_events(conn, events)
        self.pump.committed(events)
        ended = to_compact(events) if self.compact_runs else []
        if ended:  # an imported log is packed as the one it came from was
            self._import_packed = await self.compact(ended) > 0 or self._import_packed

    async def imported(self) -> None:
        """Give back the space of the rows the import packed away.

        Each chunk wrote every event as a row and packed the runs it ended, so
        most rows were deleted again, and the heap and its indexes keep their
        space until later inserts reuse it (a plain ``VACUUM`` frees the heap's
        for reuse, not the indexes', whose keys only grow); each chunk also
        wrote again the documents and stream heads it folded. A 10^5 log
        imported kept 52 KB a turn, 17 KB after ``VACUUM FULL``
        (docs/explanation/scale.md). An import fills a new store, so rewriting
        those tables once at its end (``VACUUM FULL``: a lock on each while it
        runs, 2.6 s at 10^5) leaves it as compact as appends would.
        """
        if not self._import_packed:
            return
        async with self._maintenance() as conn:  # outside any transaction
            # the documents and stream heads too: each chunk wrote those it folded again
            await conn.execute("VACUUM FULL events, docs, streams")
        self._import_packed = False

    async def compact(self, stream_ids: Sequence[str]) -> int:
        async with self._reader.connection() as conn:
            return await compact(conn, stream_ids)

    async def rebuild(self) -> int:
        return await self._rebuild(only_if_stale=False)

    async def _rebuild(self, *, only_if_stale: bool) -> int:
        """Refold every read model under the head lock (appends wait meanwhile)."""
        self._writer.forget()
        async with self._maintenance() as conn, conn.transaction():
            await conn.execute(self._lock_head())
            if only_if_stale and not await self._stale_projections(conn):
                return 0  # another node rebuilt while this one waited
            await conn.execute("DELETE FROM docs")
            await conn.execute("DELETE FROM snapshots")
            count = await self._writer.refold(conn)
            await conn.execute(
                sql.RECORD_META,
                [f"projection:{p.kind}" for p in self.projections],
                [str(p.version) for p in self.projections],
            )
            return count

    def _maintenance(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """A connection of its own for a rebuild or an import: the whole log in one
        transaction may take far longer than the statement timeout allows a request."""
        settings = {**self._settings("maintenance"), "statement_timeout": "0"}
        return own_connection(self.dsn, self.connect_timeout_s, settings)
