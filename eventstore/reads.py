"""Reads a backend serves from its reader, forwarded once for every backend.

Both stores keep their read queries in a reader object (``sqlite/reader.py``,
``postgres/reader.py``); the store only forwards, so the forwarding is written here
once instead of in each backend.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import Doc, RecordedEvent


class Reader(Protocol):
    """What a backend's reader answers: the read half of :class:`EventStore`."""

    async def read_stream(
        self,
        stream_id: str,
        after_version: int = 0,
        *,
        limit: int | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]: ...

    async def read_all(
        self,
        after_position: int = 0,
        *,
        limit: int = 1000,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]: ...

    async def head_position(self) -> int: ...

    async def stream_version(self, stream_id: str) -> int: ...

    async def position_of(self, stream_id: str, version: int) -> int | None: ...

    async def position_at(self, timestamp: str) -> int: ...

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
    ) -> list[Doc]: ...

    async def latest_snapshot(
        self, stream_id: str, kind: str, *, max_position: int | None = None
    ) -> tuple[int, int, dict[str, Any]] | None: ...


R = TypeVar("R", bound=Reader)


class ReaderBackedStore(EventStore, Generic[R]):
    """An :class:`EventStore` whose reads are its ``_reader``'s (typed as the backend's
    own reader, which the store also uses for what only that backend has)."""

    _reader: R

    async def read_stream(
        self,
        stream_id: str,
        after_version: int = 0,
        *,
        limit: int | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        return await self._reader.read_stream(
            stream_id, after_version, limit=limit, to_position=to_position
        )

    async def read_all(
        self,
        after_position: int = 0,
        *,
        limit: int = 1000,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        return await self._reader.read_all(
            after_position, limit=limit, keys=keys, to_position=to_position
        )

    async def head_position(self) -> int:
        return await self._reader.head_position()

    async def stream_version(self, stream_id: str) -> int:
        return await self._reader.stream_version(stream_id)

    async def position_of(self, stream_id: str, version: int) -> int | None:
        return await self._reader.position_of(stream_id, version)

    async def position_at(self, timestamp: str) -> int:
        return await self._reader.position_at(timestamp)

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
    ) -> list[Doc]:
        return await self._reader.list_docs(
            kind,
            owner=owner,
            parent=parent,
            active=active,
            include_deleted=include_deleted,
            after=after,
            limit=limit,
        )

    async def latest_snapshot(
        self, stream_id: str, kind: str, *, max_position: int | None = None
    ) -> tuple[int, int, dict[str, Any]] | None:
        return await self._reader.latest_snapshot(stream_id, kind, max_position=max_position)
