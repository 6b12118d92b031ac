"""The SQLite event store: the writer thread and the readers, wired to the contract.

Appends queue in :class:`GroupCommit`; one writer task takes whatever is
queued and hands the whole batch to the writer thread in one hop
(``writer.py``), then answers each caller and publishes what committed to the
hub in position order. Reads go to ``reader.py``'s connections, never the
writer's. ``synchronous=FULL`` makes an acknowledged append survive a power
cut; group commit amortises the fsync over the batch.

A server opens its store ``exclusive``: it holds ``<db>.lock`` while open
(``files.py``), so a second server on the same file is refused, and its runs are
its own to recover. ``":memory:"`` is a private store in a temporary directory,
removed at close: the readers' connections must see the writer's data, and an
SQLite in-memory database is private to the one connection that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sessionstream.core.errors import SessionStreamError, StorageUnavailable
from sessionstream.eventstore.base import DEFAULT_CATCHUP_READS, DEFAULT_PAGE_BYTES, EventStore
from sessionstream.eventstore.compaction import to_compact
from sessionstream.eventstore.delegated_reads import DelegatedReads
from sessionstream.eventstore.groupcommit import Outcome, Pending
from sessionstream.eventstore.model import (
    AppendRequest,
    AppendResult,
    RecordedEvent,
)
from sessionstream.eventstore.packed_reads import PackedReads
from sessionstream.eventstore.projector import Projection
from sessionstream.eventstore.sqlite import files, relayout
from sessionstream.eventstore.sqlite.checkpointer import INTERVAL_S as CHECKPOINT_INTERVAL_S
from sessionstream.eventstore.sqlite.checkpointer import Checkpointer
from sessionstream.eventstore.sqlite.packs import SQLitePacks
from sessionstream.eventstore.sqlite.reader import SQLiteReader
from sessionstream.eventstore.sqlite.schema import translate_sqlite_error
from sessionstream.eventstore.sqlite.thread import WriterThread
from sessionstream.eventstore.sqlite.tree import SQLiteTree
from sessionstream.eventstore.sqlite.writer import SQLiteWriter

log = logging.getLogger("sessionstream.eventstore")
MEMORY = ":memory:"
#: re-layout steps a closing store still takes (``sqlite/relayout.py``): the tail, bounded
CLOSING_STEPS = 16


def _above_debug(record: logging.LogRecord) -> bool:
    return record.levelno > logging.DEBUG


# aiosqlite logs every call it runs at DEBUG with the call's arguments: SQL parameters,
# the hashes of API tokens among them. Those lines never leave the library.
logging.getLogger("aiosqlite").addFilter(_above_debug)

T = TypeVar("T")


class SQLiteEventStore(PackedReads, DelegatedReads, EventStore):
    delivery_tasks = ("sqlite-writer",)
    #: the rows half of every read (``PackedReads`` merges the packs in)
    _reader: SQLiteReader
    #: the Merkle tree, on a thread and connection of its own (``sqlite/tree.py``)
    tree: SQLiteTree

    def __init__(
        self,
        path: str | os.PathLike[str],
        projections: Sequence[Projection] = (),
        *,
        snapshot_every: int = 200,
        max_batch: int = 2000,
        max_pending: int = 10_000,
        readers: int = 2,
        cache_size: int = 10_000,
        busy_retries: int = 3,
        max_queue: int = 1024,
        page_bytes: int = DEFAULT_PAGE_BYTES,
        catchup_reads: int = DEFAULT_CATCHUP_READS,
        on_batch: Callable[[int, int], None] | None = None,
        compact_runs: bool = True,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
        exclusive: bool = False,
    ) -> None:
        super().__init__(
            projections,
            max_queue=max_queue,
            max_batch=max_batch,
            max_pending=max_pending,
            page_bytes=page_bytes,
            catchup_reads=catchup_reads,
        )
        self.path = str(path)
        self.snapshot_every = snapshot_every
        self.busy_retries = busy_retries
        #: called after each batch with (callers answered, events appended)
        self.on_batch = on_batch
        #: pack a run's token deltas once it ends (``eventstore/packing.py``); False keeps rows
        self.compact_runs = compact_runs
        self._writer = SQLiteWriter(
            self.path,
            self.projections,
            snapshot_every=snapshot_every,
            busy_retries=busy_retries,
            cache_size=cache_size,
        )
        self._reader = SQLiteReader(self.path, connections=readers, cache_size=cache_size)
        self._writer.before_commit = self._reader.cache.hold
        #: the packs beside the log, read on the readers' connections
        self.packs = SQLitePacks(self._reader.rows)
        self.tree = SQLiteTree(lambda fn: self._in_writer(fn, self._writer._connection()))
        #: the WAL checkpoint policy: a thread of its own, off the append path
        self.checkpointer = Checkpointer(self.path, interval_s=checkpoint_interval_s)
        self._writer_task: asyncio.Task[None] | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        #: a committed batch whose callers were not answered yet (see ``_resume``)
        self._unanswered: tuple[list[Pending], list[Outcome]] | None = None
        self._executor: WriterThread | None = None
        self._closing = False
        self._open = False
        #: a re-layout step may have work (``sqlite/relayout.py``): runs were compacted
        self._relay_due = compact_runs
        self._batches_since_relay = 0
        self._compacted_since_open = False
        #: held while open when ``exclusive``: this process serves the file
        self._lock = files.ServerLock(self.path) if exclusive and self.path != MEMORY else None
        self._scratch: str | None = None  # the temporary directory of a ":memory:" store

    @property
    def _wconn(self) -> sqlite3.Connection | None:
        """The writer's connection (fault-injection tests swap it)."""
        return self._writer.conn

    @_wconn.setter
    def _wconn(self, conn: sqlite3.Connection | None) -> None:
        self._writer.conn = conn

    # lifecycle -----------------------------------------------------------
    def owns_runs(self) -> bool:
        """Whether runs left unended in this file are this process's to end: yes when
        it serves the file, or when no server does (``eventstore/leases.py``)."""
        if self._lock is not None and self._lock.held:
            return True
        return self.path == MEMORY or files.holder(self.path) is None

    async def open(self) -> None:
        if self._open:
            return
        self._closing = False
        try:
            await self._open_files()
        except BaseException:
            # a half-open store would keep the process alive: its reader threads and
            # the writer's thread are not daemons
            await self._release()
            raise

    async def _open_files(self) -> None:
        if self.path == MEMORY:
            self._scratch = tempfile.mkdtemp(prefix="sessionstream-memory-")
            self._writer.path = self._reader.path = os.path.join(self._scratch, "store.db")
        try:
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                if self._lock is not None:
                    self._lock.acquire()  # before anything is read or recovered
            files.create_private(self._writer.path)  # 0600, and so are its -wal and -shm
        except OSError as exc:  # a directory that cannot be written, a path that is a file
            raise StorageUnavailable(f"cannot open {self.path}: {exc.strerror or exc}") from exc
        self._executor = WriterThread("sessionstream-writer")
        await self._in_writer(self._writer.open)
        self.checkpointer.path = self._writer.path  # :memory: is a scratch file too
        if self.checkpointer.path != MEMORY:
            self._checkpoint_task = self.supervisor.spawn("wal-checkpoint", self.checkpointer.run)
        await self._reader.open()
        await self.tree.open(self._writer.path)
        self.hub.published_position = await self.head_position()
        self._writer_task = self.supervisor.spawn("sqlite-writer", self._writer_loop)
        self._open = True
        stale = await self._in_writer(self._writer.stale_projections)
        if stale:
            if self.hub.published_position:  # a new, empty store has nothing to refold
                log.info("projection versions changed (%s): rebuilding read models", stale)
            await self.rebuild()  # on an empty store this just records the versions

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._closing = True
        if self._writer_task is not None:
            await self.commits.drained()  # every queued append gets its answer first
            left = self.compactions.take_all()
            if left:
                await self.compact_quietly(left)
            # the last steps, up to the head: bounded, an old log is re-laid while open
            # only after a compaction: re-laying rows that never had holes rewrites them
            # for nothing (10,000 appends without runs wrote 18% more with it)
            if self._compacted_since_open:
                for _ in range(CLOSING_STEPS):
                    if not await self._relay_quietly(tail=True):
                        break
        await self._release()

    async def _release(self) -> None:
        """Stop the writer task, close every connection and thread, drop the lock:
        after a close, and after an open that failed half-way."""
        self._open = False
        if self._writer_task is not None:
            self._writer_task.cancel()
            try:
                await self._writer_task
            except asyncio.CancelledError:
                pass
            self._writer_task = None
        try:
            try:
                await self.tree.close()
            finally:
                await self._reader.close()
        finally:
            if self._checkpoint_task is not None:
                self._checkpoint_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._checkpoint_task
                self._checkpoint_task = None
            await asyncio.to_thread(self.checkpointer.close)
            if self._executor is not None:
                try:
                    await self._in_writer(self._writer.close)
                finally:
                    self._executor.shutdown()
                    self._executor = None
            if self._lock is not None:
                self._lock.release()
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the writer thread: the only thread that touches its connection."""
        if self._executor is None:
            raise StorageUnavailable("the event store is not open")
        return await self._executor.call(fn, *args)

    # writes ---------------------------------------------------------------
    async def transact(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        if not self._open or self._closing:
            raise StorageUnavailable("the event store is not open")
        return await self.commits.submit(requests)

    async def _writer_loop(self) -> None:
        """Group-commit forever; supervised, so a crash resumes here with ``_resume``."""
        commits = self.commits
        await self._resume()
        while True:
            stream_id = self.compactions.next()
            if stream_id is not None:
                await self.compact_quietly([stream_id])
                continue
            if self._relay_due and (
                not commits.waiting or self._batches_since_relay >= relayout.FORCE_AFTER
            ):
                self._relay_due = await self._relay_quietly(tail=False)
                continue
            batch = await commits.next_batch()
            self._batches_since_relay += 1
            try:
                plan = await self._in_writer(self._writer.write_batch, batch)
            except BaseException as exc:  # never leave a caller waiting
                self._reader.cache.release()  # nothing of it committed, or the file has it
                commits.fail(
                    batch,
                    exc
                    if isinstance(exc, SessionStreamError)
                    else translate_sqlite_error(
                        exc if isinstance(exc, sqlite3.Error) else sqlite3.Error(str(exc))
                    ),
                )
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self._unanswered = (batch, plan.outcomes)
            try:
                self._reader.cache.put_all(plan.docs)
            finally:
                self._reader.cache.release()  # the batch's documents are cached again
            self._unanswered = None
            commits.answer(batch, plan.outcomes)
            self.hub.publish(plan.records)  # the batch's new events, in position order
            if self.on_batch is not None:
                self.on_batch(len(batch), len(plan.records))
            if self.compact_runs:  # packed between batches, when no append waits
                self.compactions.add(to_compact(plan.records))

    async def _resume(self) -> None:
        """After a crash past a commit: answer its callers, publish what the hub missed.

        The batch committed, so its callers get their outcomes (with the read
        cache emptied first: it may hold part of the batch). Subscribers get
        every event after the hub's published position, read back from the
        log, so none of them misses one; a first start has nothing to do.
        """
        unanswered, self._unanswered = self._unanswered, None
        if unanswered is not None:
            self._reader.cache.clear()
            self.commits.answer(*unanswered)
        head = await self.head_position()
        while self.hub.published_position < head:
            page = await self.read_all(self.hub.published_position, limit=1000)
            if not page:
                break
            self.hub.publish(page)

    async def import_events(self, events: Sequence[RecordedEvent]) -> None:
        if not self._open or self._closing:
            raise StorageUnavailable("the event store is not open")
        if not events:
            return
        await self.commits.drained()  # appends already queued land first
        try:
            await self._in_writer(self._writer.import_events, list(events))
        finally:
            self._reader.cache.clear()
        self.hub.publish(events)
        ended = to_compact(events) if self.compact_runs else []
        if ended:  # an imported log is packed as the one it came from was
            await self.compact(ended)

    async def compact(self, stream_ids: Sequence[str]) -> int:
        moved = await self._in_writer(self._writer.compact, list(stream_ids))
        if moved:  # their pages have holes now: re-lay them (``sqlite/relayout.py``)
            self._relay_due = self._compacted_since_open = True
        return moved

    async def _relay_quietly(self, *, tail: bool) -> bool:
        """One re-layout step; whether it did any. A failure only leaves the holes."""
        self._batches_since_relay = 0
        try:
            pending = self.compactions.pending()  # runs ended whose deltas will leave
            return bool(await self._in_writer(self._writer.relay, tail, pending))
        except Exception:
            log.exception("re-laying the log behind compaction failed")
            return False

    async def rebuild(self) -> int:
        self._reader.cache.clear()
        return await self._in_writer(self._writer.rebuild)
