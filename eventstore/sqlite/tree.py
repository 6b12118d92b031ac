"""The SQLite store's Merkle tree: its node and checkpoint tables, on the writer thread.

Integration and proof reads run on the writer's thread and connection, so
they never contend for the file's write lock and work on ``:memory:`` too;
each is a few indexed reads, small beside a batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sessionstream.eventstore.merkle import Block
from sessionstream.eventstore.sqlite.packs import merged_hashes
from sessionstream.eventstore.tree import LogTree, StoredCheckpoint, gap_error

T = TypeVar("T")
Run = Callable[[Callable[[sqlite3.Connection], T]], Awaitable[T]]

SIZE_KEY = "merkle:size"
CHECKPOINT_COLUMNS = "size, root, note, recorded_at"


def event_hashes(conn: sqlite3.Connection, start: int, end: int) -> list[str]:
    rows = merged_hashes(conn, start, end)  # a finished run's deltas are packed
    hashes: list[str] = []
    for expected, (position, value) in enumerate(rows, start + 1):
        if position != expected:
            raise gap_error(expected)
        hashes.append(value)
    return hashes


class SQLiteTree(LogTree):
    def __init__(self, run: Run[object]) -> None:
        self._run = run

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(fn)  # type: ignore[return-value]

    async def _size(self) -> int:
        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (SIZE_KEY,)).fetchone()
            return int(row[0]) if row else 0

        return await self._call(read)

    async def _event_hashes(self, start: int, end: int) -> Sequence[str]:
        return await self._call(lambda conn: event_hashes(conn, start, end))

    async def _nodes(self, blocks: set[Block]) -> dict[Block, bytes]:
        def read(conn: sqlite3.Connection) -> dict[Block, bytes]:
            found: dict[Block, bytes] = {}
            for level, index in blocks:
                row = conn.execute(
                    "SELECT hash FROM merkle_nodes WHERE level = ? AND idx = ?", (level, index)
                ).fetchone()
                if row:
                    found[(level, index)] = bytes(row[0])
            return found

        return await self._call(read)

    async def _extend(self, old: int, new: int, nodes: Sequence[tuple[int, int, bytes]]) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (SIZE_KEY,)).fetchone()
                if (int(row[0]) if row else 0) != old:
                    conn.execute("ROLLBACK")
                    return False
                conn.executemany(
                    "INSERT OR IGNORE INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes
                )
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (SIZE_KEY, str(new)),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return True

        return await self._call(write)

    async def save_checkpoint(self, checkpoint: StoredCheckpoint) -> StoredCheckpoint:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT OR IGNORE INTO checkpoints ({CHECKPOINT_COLUMNS}) VALUES (?, ?, ?, ?)",
                (checkpoint.size, checkpoint.root, checkpoint.note, checkpoint.recorded_at),
            )

        await self._call(write)
        kept = await self.checkpoint(checkpoint.size)
        assert kept is not None
        return kept

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        def read(conn: sqlite3.Connection) -> StoredCheckpoint | None:
            if size is None:
                sql = f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY size DESC LIMIT 1"
                row = conn.execute(sql).fetchone()
            else:
                sql = f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE size = ?"
                row = conn.execute(sql, (size,)).fetchone()
            return StoredCheckpoint(row[0], bytes(row[1]), row[2], row[3]) if row else None

        return await self._call(read)
