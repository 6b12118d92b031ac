"""A store's reads of documents and positions (``EventStore``'s), handed to its reader.

Both backends' stores read through a reader of their own (``sqlite/reader.py``,
``postgres/reader.py``) with these very signatures; the one-line delegations
are written once here. The reads that merge packed deltas in are
``PackedReads``'.
"""

from __future__ import annotations

from typing import Any, Protocol

from sessionstream.eventstore.model import Doc


class DocReader(Protocol):
    """What a backend's reader answers."""

    async def head_position(self) -> int: ...

    async def stream_version(self, stream_id: str) -> int: ...

    async def get_doc(self, kind: str, key: str) -> Doc | None: ...

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
    ) -> list[Doc]: ...

    async def scan_docs(
        self, kind: str, *, after: str | None = None, limit: int = 100
    ) -> list[Doc]: ...

    async def latest_snapshot(
        self, stream_id: str, kind: str, *, max_position: int | None = None
    ) -> tuple[int, int, dict[str, Any]] | None: ...


class DelegatedReads:
    """The store's document and position reads, delegated to its reader."""

    _reader: DocReader

    async def head_position(self) -> int:
        return await self._reader.head_position()

    async def stream_version(self, stream_id: str) -> int:
        return await self._reader.stream_version(stream_id)

    async def stored_doc(self, kind: str, key: str) -> Doc | None:
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
