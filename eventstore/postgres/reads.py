"""The store's reads of documents and positions (``EventStore``'s), on the reader's pool.

One line each, kept out of ``store.py`` for size, as the lease methods are
(``leases.py``); the reads that merge packed deltas in are ``PackedReads``'.
"""

from __future__ import annotations

from typing import Any

from sessionstream.eventstore.model import Doc
from sessionstream.eventstore.postgres.reader import PostgresReader


class PostgresReads:
    """The store's document and position reads, delegated to its ``PostgresReader``."""

    _reader: PostgresReader

    async def head_position(self) -> int:
        return await self._reader.head_position()

    async def stream_version(self, stream_id: str) -> int:
        return await self._reader.stream_version(stream_id)

    async def get_doc(self, kind: str, key: str) -> Doc | None:
        return await self._reader.get_doc(kind, key)

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
        return await self._reader.list_docs(
            kind,
            owner=owner,
            parent=parent,
            active=active,
            include_deleted=include_deleted,
            after=after,
            limit=limit,
            max_bytes=max_bytes,
        )

    async def scan_docs(
        self, kind: str, *, after: str | None = None, limit: int = 100
    ) -> list[Doc]:
        return await self._reader.scan_docs(kind, after=after, limit=limit)

    async def latest_snapshot(
        self, stream_id: str, kind: str, *, max_position: int | None = None
    ) -> tuple[int, int, dict[str, Any]] | None:
        return await self._reader.latest_snapshot(stream_id, kind, max_position=max_position)
