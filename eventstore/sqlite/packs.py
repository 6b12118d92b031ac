"""The SQLite side of packed runs (``eventstore/packing.py``): the SQL,
the compaction, and the merged reads the writer's own connection needs.

Readers merge on the event loop (``store.py``); the writer thread merges for
``rebuild`` and the Merkle tree's leaves with :func:`merged_page` here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from sessionstream.eventstore.compaction import (
    compaction,
    last_anchor,
    repacked,
    runs_to_unpack,
    tail_from,
)
from sessionstream.eventstore.hashcodec import decode_hash
from sessionstream.eventstore.model import RecordedEvent, row_to_event
from sessionstream.eventstore.packing import NO_BOUND, Pack, block_of, times_of, unpack_all
from sessionstream.eventstore.packmerge import merge_streams, stream_span
from sessionstream.eventstore.sqlite.schema import EVENT_COLUMNS, LOOKUP_CHUNK, POSITION_AT

PACK_ROW = "stream_id, correlation_id, body"
#: a pack an ``as_of=<time>`` cuts, with what orders and bounds its search
#: (``packed_reads.CutPack``)
CUT_ROW = f"{PACK_ROW}, first_position, last_position, events, first_at, last_at"
#: a session packed again writes its packs anew: one statement for a new block's pack and
#: for one written before (PostgreSQL's compaction relies on the same upsert). Either way
#: about 18% of the packs' pages stay unused at 10^5: a session's pack grows each turn,
#: and a row that outgrows its page moves (docs/explanation/scale.md)
INSERT_PACK = (
    "INSERT INTO packs (stream_id, block, correlation_id, first_position, last_position, "
    "events, body, first_at, last_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (stream_id, block) DO UPDATE SET correlation_id = excluded.correlation_id, "
    "first_position = excluded.first_position, last_position = excluded.last_position, "
    "events = excluded.events, body = excluded.body, first_at = excluded.first_at, "
    "last_at = excluded.last_at"
)
#: schema 3 to 4
PACK_TIMES = (
    "ALTER TABLE packs ADD COLUMN first_at TEXT; ALTER TABLE packs ADD COLUMN last_at TEXT;"
)
#: a stream's packs up to a position: a read of its past opens none after it
PACKS_OF = (
    f"SELECT {PACK_ROW} FROM packs WHERE stream_id = ? AND first_position <= ? ORDER BY block"
)
#: a session's packs a compaction writes again, and the one before them it chains onto
PACKS_FROM = f"SELECT {PACK_ROW} FROM packs WHERE stream_id = ? AND block >= ? ORDER BY block"
PACK_BEFORE = "SELECT body FROM packs WHERE stream_id = ? AND block < ? ORDER BY block DESC LIMIT 1"
PACKS_OF_STREAMS = f"SELECT {PACK_ROW} FROM packs WHERE stream_id BETWEEN ? AND ?"
#: blocks seek the index; the positions skip packs wholly outside (after, bound]
IN_RANGE = "block BETWEEN ? AND ? AND last_position > ? AND first_position <= ?"
PACKS_BETWEEN = f"SELECT {PACK_ROW} FROM packs WHERE {IN_RANGE}"
IN_RANGE_N = "block BETWEEN ?1 AND ?2 AND last_position > ?3 AND first_position <= ?4"
#: as_of=<time>, in one statement: the last position of the packs wholly at or before
#: the time (?5) within (?3, ?4], then the rows of the packs the time or the bound cuts
PACKS_AT = f"""
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, MAX(last_position) FROM packs
WHERE {IN_RANGE_N} AND last_at <= ?5 AND last_position <= ?4
UNION ALL
SELECT {CUT_ROW}, NULL FROM packs WHERE {IN_RANGE_N}
    AND (last_at IS NULL OR (first_at <= ?5 AND (last_at > ?5 OR last_position > ?4)))
"""
#: the last event row at or before a time (``schema.POSITION_AT``) and the row after it
POSITION_AND_NEXT = f"""
WITH q(p) AS ({POSITION_AT})
SELECT p, (SELECT MIN(position) FROM events WHERE position > p) FROM q
"""
STREAM_EVENTS = f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? ORDER BY version"
PAGE = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? ORDER BY position LIMIT ?"
WINDOW_PAGE = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? AND position <= ? "
    "ORDER BY position LIMIT ?"
)


def packs_between_sql(after: int, bound: int, keys: frozenset[str] | None) -> tuple[str, list[Any]]:
    """The pack rows that may hold events in ``(after, bound]`` under ``keys``.

    With keys, one indexed lookup per key column (a union of two seeks, each
    pack once): a session's catch-up reads its own runs' packs, not the log's.
    """
    high = min(bound, NO_BOUND)
    span = [block_of(after + 1), block_of(high), after, high]
    if keys is None:
        return PACKS_BETWEEN, span
    marks = ",".join("?" * len(keys))
    sql = (
        f"SELECT {PACK_ROW} FROM packs WHERE stream_id IN ({marks}) AND {IN_RANGE} "
        f"UNION SELECT {PACK_ROW} FROM packs WHERE correlation_id IN ({marks}) AND {IN_RANGE}"
    )
    return sql, [*keys, *span, *keys, *span]


class SQLitePacks:
    """The pack reads of ``eventstore/packed_reads.py`` on the readers' connections."""

    def __init__(self, rows: Callable[[str, Sequence[Any]], Awaitable[list[Any]]]) -> None:
        self._rows = rows

    async def packs_of(self, stream_id: str, bound: int = NO_BOUND) -> list[Any]:
        return await self._rows(PACKS_OF, (stream_id, bound))

    async def packs_between(self, after: int, bound: int, keys: frozenset[str] | None) -> list[Any]:
        return await self._rows(*packs_between_sql(after, bound, keys))

    async def packs_of_streams(self, low: str, high: str) -> list[Any]:
        return await self._rows(PACKS_OF_STREAMS, (low, high))

    async def stored_at(self, timestamp: str) -> tuple[int, int | None]:
        (row,) = await self._rows(POSITION_AND_NEXT, (timestamp,))
        return int(row[0]), None if row[1] is None else int(row[1])

    async def packs_at(
        self, after: int, bound: int, timestamp: str
    ) -> tuple[int | None, list[Any]]:
        span = (block_of(after + 1), block_of(bound), after, bound, timestamp)
        rows = await self._rows(PACKS_AT, span)
        return rows[0][8], [r[:8] for r in rows[1:]]


def backfill_times(conn: sqlite3.Connection) -> None:
    """Schema 3 to 4: each pack's first and last time, read from its body once."""
    conn.executescript(PACK_TIMES)
    rows = conn.execute(f"SELECT id, {PACK_ROW} FROM packs").fetchall()
    for pack_id, *row in rows:
        times = [at for _, at in times_of([(row[0], row[1], row[2])])]
        conn.execute(
            "UPDATE packs SET first_at = ?, last_at = ? WHERE id = ?",
            (times[0], times[-1], pack_id),
        )


def pack_row(pack: Pack) -> tuple[Any, ...]:
    return (
        pack.stream_id,
        pack.block,
        pack.correlation_id,
        pack.first_position,
        pack.last_position,
        pack.count,
        pack.body,
        pack.first_at,
        pack.last_at,
    )


def compact(conn: sqlite3.Connection, stream_ids: Iterable[str]) -> int:
    """Pack the events of these streams (``packing.compaction``), in the caller's
    transaction; returns how many rows moved (a run not ended, or packed already, and
    a session with nothing new, move none)."""
    moved = 0
    for stream_id in stream_ids:
        rows = [row_to_event(r) for r in conn.execute(STREAM_EVENTS, (stream_id,))]
        packed: list[RecordedEvent] = []
        before = last_anchor(None)
        first = tail_from(rows)
        if repacked(stream_id) and rows:
            packed = unpack_all(conn.execute(PACKS_FROM, (stream_id, first)))
            row = conn.execute(PACK_BEFORE, (stream_id, first)).fetchone()
            before = last_anchor(None if row is None else bytes(row[0]))
        packs, gone = compaction(rows, packed, before)
        if not gone:
            continue
        conn.executemany(INSERT_PACK, [pack_row(p) for p in packs])
        if packed:  # a block no pack holds any more: none yet (events only join packs)
            blocks = [p.block for p in packs]
            conn.execute(
                f"DELETE FROM packs WHERE stream_id = ? AND block >= ? AND block NOT IN "
                f"({','.join('?' * len(blocks))})",
                (stream_id, first, *blocks),
            )
        conn.executemany("DELETE FROM events WHERE position = ?", [(e.position,) for e in gone])
        moved += len(gone)
    return moved


def packed_among(
    conn: sqlite3.Connection,
    ids: Collection[str],
    found: list[RecordedEvent],
    targets: Mapping[str, str] | None = None,
) -> list[RecordedEvent]:
    """``found`` (the rows among ``ids``) and the other ``ids`` packed in the runs those
    rows are of, or in the runs their requests append to (``targets``: event id ->
    stream id; ``packing.runs_to_unpack`` says why both)."""
    missing = set(ids).difference(e.event_id for e in found)
    runs = runs_to_unpack(missing, found, targets)
    for start in range(0, len(runs), LOOKUP_CHUNK):
        chunk = runs[start : start + LOOKUP_CHUNK]
        sql = f"SELECT {PACK_ROW} FROM packs WHERE stream_id IN ({','.join('?' * len(chunk))})"
        for event in unpack_all(conn.execute(sql, chunk)):
            if event.event_id in missing:
                found.append(event)
    return found


def with_packs(
    conn: sqlite3.Connection,
    page: list[RecordedEvent],
    mark: tuple[str, int],
    full: bool,
    limit: int,
) -> list[RecordedEvent]:
    """A rebuild's page in ``(stream_id, version)`` order, with its packed events: at
    most ``limit`` of them and one run more (``packmerge.merge_streams``)."""
    kept, bound = stream_span(page, mark, full, limit)
    rows = conn.execute(PACKS_OF_STREAMS, (mark[0], bound[0])).fetchall()
    return merge_streams(kept, rows, mark, bound, limit) if rows else list(kept)


def merged_hashes(conn: sqlite3.Connection, start: int, end: int) -> Sequence[tuple[int, str]]:
    """``(position, hash)`` of every event in ``(start, end]``, packed ones too."""
    rows = [
        (position, decode_hash(value))
        for position, value in conn.execute(
            "SELECT position, hash FROM events WHERE position > ? AND position <= ? "
            "ORDER BY position",
            (start, end),
        )
    ]
    packed = unpack_all(
        conn.execute(PACKS_BETWEEN, (block_of(start + 1), block_of(end), start, end)),
        (start, end, 0),
    )
    if not packed:
        return rows
    by_position = dict(rows)
    for e in packed:
        if start < e.position <= end:
            by_position.setdefault(e.position, e.hash)
    return sorted(by_position.items())
