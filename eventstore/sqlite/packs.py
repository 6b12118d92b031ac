"""The SQLite side of packed token streams (``eventstore/packing.py``): the SQL,
the compaction, and the merged reads the writer's own connection needs.

Readers merge on the event loop (``store.py``); the writer thread merges for
``rebuild`` and the Merkle tree's leaves with :func:`merged_page` here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from sessionstream.eventstore.model import RecordedEvent, row_to_event
from sessionstream.eventstore.packing import (
    NO_BOUND,
    PACKED_TYPE,
    Pack,
    block_of,
    merge_by_stream,
    pack_stream,
    stream_bound,
    unpack_all,
)
from sessionstream.eventstore.sqlite.schema import EVENT_COLUMNS

PACK_ROW = "stream_id, correlation_id, body"
INSERT_PACK = (
    "INSERT INTO packs (stream_id, block, correlation_id, first_position, last_position, "
    "events, body) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
PACKS_OF = f"SELECT {PACK_ROW} FROM packs WHERE stream_id = ? ORDER BY block"
PACKS_OF_STREAMS = f"SELECT {PACK_ROW} FROM packs WHERE stream_id BETWEEN ? AND ?"
PACKS_BETWEEN = f"SELECT {PACK_ROW} FROM packs WHERE block BETWEEN ? AND ?"
STREAM_EVENTS = f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? ORDER BY version"
PAGE = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"


def packs_between_sql(after: int, bound: int, keys: frozenset[str] | None) -> tuple[str, list[Any]]:
    """The pack rows that may hold events in ``(after, bound]`` under ``keys``.

    With keys, one indexed lookup per key column (a union of two seeks, each
    pack once): a session's catch-up reads its own runs' packs, not the log's.
    """
    low, high = block_of(after + 1), block_of(min(bound, NO_BOUND))
    if keys is None:
        return PACKS_BETWEEN, [low, high]
    marks = ",".join("?" * len(keys))
    sql = (
        f"SELECT {PACK_ROW} FROM packs WHERE stream_id IN ({marks}) AND block BETWEEN ? AND ? "
        f"UNION SELECT {PACK_ROW} FROM packs WHERE correlation_id IN ({marks}) "
        "AND block BETWEEN ? AND ?"
    )
    return sql, [*keys, low, high, *keys, low, high]


class SQLitePacks:
    """The pack reads of ``eventstore/packed_reads.py`` on the readers' connections."""

    def __init__(self, rows: Callable[[str, Sequence[Any]], Awaitable[list[Any]]]) -> None:
        self._rows = rows

    async def packs_of(self, stream_id: str) -> list[Any]:
        return await self._rows(PACKS_OF, (stream_id,))

    async def packs_between(self, after: int, bound: int, keys: frozenset[str] | None) -> list[Any]:
        return await self._rows(*packs_between_sql(after, bound, keys))

    async def packs_of_streams(self, low: str, high: str) -> list[Any]:
        return await self._rows(PACKS_OF_STREAMS, (low, high))

    async def next_stored(self, position: int) -> int | None:
        rows = await self._rows("SELECT MIN(position) FROM events WHERE position > ?", (position,))
        return None if rows[0][0] is None else int(rows[0][0])


def pack_row(pack: Pack) -> tuple[Any, ...]:
    return (
        pack.stream_id,
        pack.block,
        pack.correlation_id,
        pack.first_position,
        pack.last_position,
        pack.count,
        pack.body,
    )


def compact(conn: sqlite3.Connection, stream_ids: Iterable[str]) -> int:
    """Pack the deltas of these finished streams, in the caller's transaction; returns
    how many events moved (a stream not ended, or already packed, moves none)."""
    moved = 0
    for stream_id in stream_ids:
        events = [row_to_event(r) for r in conn.execute(STREAM_EVENTS, (stream_id,))]
        packs = pack_stream(events)
        if not packs:
            continue
        conn.executemany(INSERT_PACK, [pack_row(p) for p in packs])
        gone = [(e.position,) for e in events if e.type == PACKED_TYPE]
        conn.executemany("DELETE FROM events WHERE position = ?", gone)
        moved += len(gone)
    return moved


def with_packs(
    conn: sqlite3.Connection, page: list[RecordedEvent], mark: tuple[str, int], full: bool
) -> list[RecordedEvent]:
    """A rebuild's page in ``(stream_id, version)`` order, with its packed deltas."""
    bound = stream_bound(page, mark, full)
    rows = conn.execute(PACKS_OF_STREAMS, (mark[0], bound[0])).fetchall()
    return merge_by_stream(page, unpack_all(rows), mark, bound) if rows else page


def merged_hashes(conn: sqlite3.Connection, start: int, end: int) -> Sequence[tuple[int, str]]:
    """``(position, hash)`` of every event in ``(start, end]``, packed ones too."""
    rows: list[tuple[int, str]] = conn.execute(
        "SELECT position, hash FROM events WHERE position > ? AND position <= ? ORDER BY position",
        (start, end),
    ).fetchall()
    packed = unpack_all(conn.execute(PACKS_BETWEEN, (block_of(start + 1), block_of(end))))
    if not packed:
        return rows
    by_position = dict(rows)
    for e in packed:
        if start < e.position <= end:
            by_position.setdefault(e.position, e.hash)
    return sorted(by_position.items())
