"""The PostgreSQL store's Merkle tree: node and checkpoint tables, read through the pool.

Several nodes may integrate at once; the size in ``meta`` is moved by a
compare-and-set under its row lock, so exactly one of them advances it and
the others start over from the new size (their nodes are the same hashes,
inserted with ``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg

from sessionstream.core.errors import StorageUnavailable
from sessionstream.eventstore.merkle import Block
from sessionstream.eventstore.postgres.errors import translated
from sessionstream.eventstore.postgres.packs import merged_hashes
from sessionstream.eventstore.tree import LogTree, StoredCheckpoint, gap_error

SIZE_KEY = "merkle:size"
CHECKPOINT_COLUMNS = "size, root, note, recorded_at"


class PostgresTree(LogTree):
    def __init__(self, pool: Callable[[], asyncpg.Pool | None]) -> None:
        self._pool = pool

    def _p(self) -> asyncpg.Pool:
        pool = self._pool()
        if pool is None:
            raise StorageUnavailable("the event store is not open")
        return pool

    @translated
    async def _size(self) -> int:
        value = await self._p().fetchval("SELECT value FROM meta WHERE key = $1", SIZE_KEY)
        return int(value) if value is not None else 0

    @translated
    async def _event_hashes(self, start: int, end: int) -> Sequence[str]:
        rows = await merged_hashes(self._p(), start, end)  # a finished run's deltas are packed
        hashes: list[str] = []
        for expected, row in enumerate(rows, start + 1):
            if row[0] != expected:
                raise gap_error(expected)
            hashes.append(row[1])
        return hashes

    @translated
    async def _nodes(self, blocks: set[Block]) -> dict[Block, bytes]:
        ordered = sorted(blocks)
        rows = await self._p().fetch(
            "SELECT n.level, n.idx, n.hash FROM merkle_nodes n "
            "JOIN unnest($1::int[], $2::bigint[]) AS w(level, idx) USING (level, idx)",
            [b[0] for b in ordered],
            [b[1] for b in ordered],
        )
        return {(r[0], r[1]): bytes(r[2]) for r in rows}

    @translated
    async def _extend(self, old: int, new: int, nodes: Sequence[tuple[int, int, bytes]]) -> bool:
        async with self._p().acquire() as conn, conn.transaction():
            value = await conn.fetchval(
                "SELECT value FROM meta WHERE key = $1 FOR UPDATE", SIZE_KEY
            )
            if (int(value) if value is not None else 0) != old:
                return False
            await conn.execute(
                "INSERT INTO merkle_nodes (level, idx, hash) "
                "SELECT * FROM unnest($1::int[], $2::bigint[], $3::bytea[]) "
                "ON CONFLICT DO NOTHING",
                [n[0] for n in nodes],
                [n[1] for n in nodes],
                [n[2] for n in nodes],
            )
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                SIZE_KEY,
                str(new),
            )
        return True

    @translated
    async def save_checkpoint(self, checkpoint: StoredCheckpoint) -> StoredCheckpoint:
        await self._p().execute(
            f"INSERT INTO checkpoints ({CHECKPOINT_COLUMNS}) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (size) DO NOTHING",
            checkpoint.size,
            checkpoint.root,
            checkpoint.note,
            checkpoint.recorded_at,
        )
        kept = await self.checkpoint(checkpoint.size)
        assert kept is not None
        return kept

    @translated
    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        if size is None:
            row = await self._p().fetchrow(
                f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY size DESC LIMIT 1"
            )
        else:
            row = await self._p().fetchrow(
                f"SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE size = $1", size
            )
        return StoredCheckpoint(row[0], bytes(row[1]), row[2], row[3]) if row else None
