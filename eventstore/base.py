"""The backend contract every event store implements.

One contract, one test suite (``tests/contract/``), every backend: the
guarantees below are what commands, projections and subscribers rely on.

- ``transact`` is atomic across all its requests: either every event is
  appended (with gapless global positions in commit order) and every derived
  read-model document is written in the same transaction, or nothing is.
- ``expected_version`` is checked inside the transaction; a mismatch raises
  ``ConcurrencyConflict``, never a partial write.
- An event whose ``event_id`` is already stored makes its request an
  idempotent no-op that returns the stored records, whatever version it
  expected. A request whose ids are stored only in part, or on another
  stream, raises ``ValidationFailed``.
- A request that repeats an event id, or whose stream id, event ids, types or
  correlation ids hold a NUL or a lone surrogate, can never be stored: it
  raises ``ValidationFailed`` whatever it expected.
- Appends are group-committed: a ``transact`` that fails, fails alone; the
  others queued with it commit. Both backends decide a batch with the one
  planner in ``eventstore/batch.py``, where these rules are written down.
- ``subscribe`` delivers every event after the cursor exactly once, in
  position order, catching up from the store and then live.
- A page of the log is bounded in bytes as well as rows (``read_page``), so
  what one read holds in memory follows the request, never the stored data;
  and at most ``catchup_reads`` catch-up pages are read at once, so a crowd of
  subscribers starting from 0 queue for the store instead of each holding a
  page of a large history at the same moment.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from sessionstream.core.supervisor import Supervisor
from sessionstream.eventstore.groupcommit import GroupCommit, IdleWork
from sessionstream.eventstore.hub import Hub, Subscription
from sessionstream.eventstore.model import (
    ANY_VERSION,
    AppendRequest,
    AppendResult,
    Doc,
    NewEvent,
    RecordedEvent,
    StoredEvent,
)
from sessionstream.eventstore.projector import (
    Projection,
    keeps_every_doc,
    stream_of,
    unkept_fold,
)
from sessionstream.eventstore.tree import LogTree

log = logging.getLogger("sessionstream.eventstore")

#: the bytes of stored JSON one page of events holds at most (one larger event goes alone)
DEFAULT_PAGE_BYTES = 1024 * 1024
#: catch-up pages read at the same time, across every subscription of a store
DEFAULT_CATCHUP_READS = 4


class EventStore(ABC):
    #: the log's Merkle tree and its signed checkpoints (``eventstore/tree.py``)
    tree: LogTree
    #: the supervised tasks live delivery stops without (heartbeats say when one is down)
    delivery_tasks: tuple[str, ...] = ()

    def __init__(
        self,
        projections: Sequence[Projection] = (),
        *,
        max_queue: int = 1024,
        max_batch: int = 2000,
        max_pending: int = 10_000,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        catchup_reads: int = DEFAULT_CATCHUP_READS,
    ) -> None:
        self.projections = tuple(projections)
        #: the projections some of whose documents are folded on read, not kept
        self._unkept = {p.kind: p for p in self.projections if not keeps_every_doc(p)}
        self.hub = Hub(max_queue=max_queue)
        #: the byte budget of a catch-up or response page (``read_page``)
        self.page_bytes = page_bytes
        #: admits catch-up page reads, ``catchup_reads`` at a time (``Subscription``)
        self.catchup = asyncio.Semaphore(catchup_reads)
        #: appends wait here for the backend's single writer (``max_pending`` at most)
        self.commits = GroupCommit(max_batch, max_pending)
        #: finished runs whose deltas the writer packs when no append waits
        self.compactions = IdleWork(self.commits)
        #: runs this store's writer and pump, and (in a server) every other background
        #: task of the node: one place says which of them is down (``core/supervisor.py``)
        self.supervisor = Supervisor()

    async def write_trouble(self) -> str | None:
        """Why writes fail now, for ``/healthz`` (None: not known to fail). A backend
        whose writes can fail while reads work (a database failing over) says so."""
        return None

    # lifecycle -----------------------------------------------------------
    @abstractmethod
    async def open(self) -> None:
        """Create or migrate the schema and start background tasks."""

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> EventStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # writes ---------------------------------------------------------------
    @abstractmethod
    async def transact(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        """Append to several streams atomically."""

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: int | None = ANY_VERSION,
    ) -> AppendResult:
        (result,) = await self.transact([AppendRequest(stream_id, tuple(events), expected_version)])
        return result

    @abstractmethod
    async def import_events(self, events: Sequence[RecordedEvent]) -> None:
        """Store already-recorded events verbatim (``sessionstream import``).

        Positions, versions, event ids, ``recorded_at`` and hashes are kept
        exactly as given (never recomputed), so an exported log imported
        elsewhere verifies and rebuilds to identical rows. ``events`` must be in
        position order, every position above the current head, and each
        stream's versions must continue that stream (1, 2, ... for a new one);
        otherwise ``ValidationFailed`` and nothing is written. Read models (and
        snapshots) are folded in the same transaction, as for ``transact``;
        subscribers receive the events as if they had just been appended.
        Callers import into an empty store in chunks, in order.
        """

    async def imported(self) -> None:
        """An import's last chunk is in (``transfer.import_into``): what a backend does
        once for the whole import. Nothing, unless it says otherwise."""
        return None

    # reads ----------------------------------------------------------------
    @abstractmethod
    async def read_stream(
        self,
        stream_id: str,
        after_version: int = 0,
        *,
        limit: int | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]: ...

    @abstractmethod
    async def read_all(
        self,
        after_position: int = 0,
        *,
        limit: int = 1000,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        """Events after ``after_position`` in order; with ``keys``, only those
        whose stream or correlation id is one of them."""

    @abstractmethod
    async def read_page(
        self,
        after_position: int,
        *,
        max_rows: int,
        max_bytes: int,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[StoredEvent]:
        """Like ``read_all``, but a page also ends before its stored JSON (data and
        metadata) passes ``max_bytes``; its first event comes whatever its size, so a
        reader always moves on. The budget is summed in the query: rows past it are
        never fetched, and ``data`` stays the stored text until someone reads it
        (``StoredEvent``)."""

    @abstractmethod
    async def read_by_stream(
        self,
        after: tuple[str, int] = ("", 0),
        *,
        limit: int = 1000,
        to_position: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RecordedEvent]:
        """Events ordered by (stream id, version), strictly after ``after``: each
        stream's events together, streams in code-point order of their ids. A
        seek on the ``(stream_id, version)`` index, so ``verify`` and ``rebuild``
        fold one stream at a time whatever the size of the log. With ``max_bytes``
        the page also ends before its stored JSON passes it (as ``read_page``; its
        first event comes whatever its size), so only an empty page ends the log."""

    @abstractmethod
    async def head_position(self) -> int: ...

    @abstractmethod
    async def stream_version(self, stream_id: str) -> int: ...

    @abstractmethod
    async def position_of(self, stream_id: str, version: int) -> int | None:
        """Global position of one stream version (how run cursors map to the log)."""

    @abstractmethod
    async def position_at(self, timestamp: str) -> int:
        """The last position recorded at or before an RFC 3339 time (0 if none)."""

    # read models ------------------------------------------------------------
    async def get_doc(self, kind: str, key: str) -> Doc | None:
        """The ``kind`` document ``key``: its row, or, for a document the store does not
        keep (``DocIndex.kept``: a finished run), the fold of its stream."""
        doc = await self.stored_doc(kind, key)
        if doc is not None:
            return doc
        projection = self._unkept.get(kind)
        if projection is None:
            return None
        return unkept_fold(projection, key, await self.read_stream(stream_of(projection, key)))

    @abstractmethod
    async def stored_doc(self, kind: str, key: str) -> Doc | None:
        """The document as the store keeps it: its row (SQLite: or the read cache's copy of
        what its last write folded), never a fold on read."""

    @abstractmethod
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
        """Documents ordered by ``created_at`` then key (a stable tie-break).

        ``after`` is the ``(created_at, key)`` of the last document a caller
        already has: the list goes on strictly after it (keyset paging, so a
        page costs the same at any depth and documents created meanwhile are
        neither skipped nor repeated). Documents without ``created_at`` sort
        first and are never after a mark. ``limit`` bounds the page; with it,
        ``max_bytes`` also ends the page before the stored JSON of its documents
        passes that many bytes (the first comes whatever its size), summed in
        the query so documents past it are never fetched.
        """

    async def compact(self, stream_ids: Sequence[str]) -> int:
        """Pack the events of these ended runs (``eventstore/packing.py``); returns
        the events packed. Stores compact each run as it ends unless told to keep rows."""
        return 0

    async def compact_quietly(self, stream_ids: Sequence[str]) -> None:
        """``compact``, for the writer between batches: a failure leaves the events
        rows (nothing is lost), logged, and the writer goes on."""
        try:
            await self.compact(stream_ids)
        except Exception:
            log.exception("compacting %d finished run(s) failed", len(stream_ids))

    @abstractmethod
    async def scan_docs(
        self, kind: str, *, after: str | None = None, limit: int = 100
    ) -> list[Doc]:
        """Every stored document of one kind (deleted ones too) in key order, strictly
        after the key ``after``; never cached. ``verify`` walks it beside the log read
        by stream: a document keyed by its stream comes in the same order."""

    @abstractmethod
    async def rebuild(self) -> int:
        """Drop every read model and snapshot and refold them from the log."""

    # snapshots ----------------------------------------------------------------
    @abstractmethod
    async def latest_snapshot(
        self, stream_id: str, kind: str, *, max_position: int | None = None
    ) -> tuple[int, int, dict[str, Any]] | None:
        """(version, position, state) of the newest usable snapshot, if any."""

    # subscriptions -------------------------------------------------------------
    def known_head(self) -> int:
        """The newest position this process knows was committed, without a query.

        Beside ``hub.published_position`` (what it delivered) it tells a
        stalled delivery from a quiet log: a backend whose events reach the
        hub through a pump knows of commits the pump has not published yet.
        """
        return self.hub.published_position

    def subscribe(
        self, after_position: int = 0, *, keys: frozenset[str] | None = None
    ) -> Subscription:
        return Subscription(self, self.hub, after_position, keys)
