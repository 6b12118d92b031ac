"""The SQLite store's Merkle tree: its node and checkpoint tables.

Reads, and the hashing of integration, run on a thread of the tree's own
with a read-only connection of its own (WAL lets it read while the writer
writes): the events' hashes, the stored nodes, the checkpoints. So neither
the event loop nor the writer's thread spends anything on a leaf; the
writer's thread gets only the writes, one small transaction per page of
integrated events (a few hundred node rows, no fsync of its own: the tree
can be rebuilt from the log) and one per checkpoint. Before that split the
integration read and hashed on the writer's thread, between the batches
(``docs/explanation/scale.md`` has the figures).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sessionstream.core.errors import StorageUnavailable
from sessionstream.eventstore import merkle
from sessionstream.eventstore.merkle import Block, Completed, Frontier
from sessionstream.eventstore.sqlite.packs import merged_hashes
from sessionstream.eventstore.sqlite.schema import unsynced
from sessionstream.eventstore.sqlite.thread import WriterThread
from sessionstream.eventstore.tree import LogTree, StoredCheckpoint, gap_error

T = TypeVar("T")
Run = Callable[[Callable[[sqlite3.Connection], T]], Awaitable[T]]

SIZE_KEY = "merkle:size"
CHECKPOINT_COLUMNS = "size, root, note, recorded_at"


def event_hashes(conn: sqlite3.Connection, start: int, end: int) -> list[str]:
    """In one read transaction: the rows and the packs from one snapshot of the file."""
    conn.execute("BEGIN")
    try:
        rows = merged_hashes(conn, start, end)  # a finished run's deltas are packed
    finally:
        conn.execute("COMMIT")
    hashes: list[str] = []
    for expected, (position, value) in enumerate(rows, start + 1):
        if position != expected:
            raise gap_error(expected)
        hashes.append(value)
    return hashes


def stored_size(conn: sqlite3.Connection) -> int:
    rows = conn.execute("SELECT value FROM meta WHERE key = ?", (SIZE_KEY,)).fetchall()
    return int(rows[0][0]) if rows else 0


class SQLiteTree(LogTree):
    """``write`` runs a function on the writer's thread and connection."""

    def __init__(self, write: Run[object]) -> None:
        self._write = write
        self._thread: WriterThread | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self, path: str) -> None:
        """Start the tree's thread and its connection (after the writer made the file)."""

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA query_only=1")
            return conn

        self._thread = WriterThread("sessionstream-tree")
        try:
            self._conn = await self._thread.call(connect)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        thread, conn = self._thread, self._conn
        self._thread = self._conn = None
        if thread is None:
            return
        try:
            if conn is not None:
                await thread.call(conn.close)
        finally:
            thread.shutdown()

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on the tree's thread and connection (each statement read to its end,
        so no read transaction stays open)."""
        if self._thread is None or self._conn is None:
            raise StorageUnavailable("the event store is not open")
        return await self._thread.call(fn, self._conn)

    async def _call_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._write(fn)  # type: ignore[return-value]

    async def _size(self) -> int:
        return await self._read(stored_size)

    async def _event_hashes(self, start: int, end: int) -> Sequence[str]:
        return await self._read(lambda conn: event_hashes(conn, start, end))

    async def _grow(self, frontier: Frontier, end: int) -> tuple[Frontier, list[Completed]]:
        return await self._read(
            lambda conn: merkle.grow(frontier, event_hashes(conn, frontier.size, end))
        )

    async def _nodes(self, blocks: set[Block]) -> dict[Block, bytes]:
        def read(conn: sqlite3.Connection) -> dict[Block, bytes]:
            found: dict[Block, bytes] = {}
            for level, index in blocks:
                rows = conn.execute(
                    "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?", (level, index)
                ).fetchall()
                if rows:
                    found[(level, index)] = bytes(rows[0][0])
            return found

        return await self._read(read)

    async def _extend(self, old: int, new: int, nodes: Sequence[Completed]) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            with unsynced(conn):
                if stored_size(conn) != old:
                    return False  # the transaction wrote nothing: its commit is a no-op
                conn.executemany(
                    "INSERT OR IGNORE INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes
                )
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (SIZE_KEY, str(new)),
                )
            return True

        return await self._call_writer(write)

    async def save_checkpoint(self, checkpoint: StoredCheckpoint) -> StoredCheckpoint:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT OR IGNORE INTO checkpoints ({CHECKPOINT_COLUMNS}) VALUES (?, ?, ?, ?)",
                (checkpoint.size, checkpoint.root, checkpoint.note, checkpoint.recorded_at),
            )

        await self._call_writer(write)
        kept = await self.checkpoint(checkpoint.size)
        assert kept is not None
        return kept

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        def read(conn: sqlite3.Connection) -> StoredCheckpoint | None:
            if size is None:
                sql = f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY size DESC LIMIT 1"
                rows = conn.execute(sql).fetchall()
            else:
                sql = f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE size = ?"
                rows = conn.execute(sql, (size,)).fetchall()
            if not rows:
                return None
            row = rows[0]
            return StoredCheckpoint(row[0], bytes(row[1]), row[2], row[3])

        return await self._read(read)
