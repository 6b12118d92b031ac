"""The PostgreSQL side of packed runs (``eventstore/packing.py``): the SQL,
the compaction, and the merged reads of ``refold`` and the Merkle tree's leaves.

A compaction is its own transaction after the batch that ended the run, with
``synchronous_commit`` off: a crash may lose it, which only leaves the deltas
as rows. Two nodes compacting one run at once insert the same packs; the
second finds them there (``ON CONFLICT DO NOTHING``) and deletes nothing more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import asyncpg

from sessionstream.eventstore.compaction import (
    compaction,
    last_anchor,
    repacked,
    runs_to_unpack,
    tail_from,
)
from sessionstream.eventstore.model import RecordedEvent, row_to_event
from sessionstream.eventstore.packing import NO_BOUND, block_of, unpack_all
from sessionstream.eventstore.packmerge import (
    merge_page,
    merge_streams,
    page_bound,
    rows_window,
    stream_span,
)
from sessionstream.eventstore.postgres.schema import EVENT_COLUMNS, POSITION_AT

PACK_ROW = "stream_id, correlation_id, body"
#: a pack an ``as_of=<time>`` cuts, with what orders and bounds its search
#: (``packed_reads.CutPack``)
CUT_ROW = f"{PACK_ROW}, first_position, last_position, events, first_at, last_at"
#: a stream's packs up to a position: a read of its past opens none after it
PACKS_OF = (
    f"SELECT {PACK_ROW} FROM packs WHERE stream_id = $1 AND first_position <= $2 ORDER BY block"
)
#: a session's packs a compaction writes again, and the one before them it chains onto
PACKS_FROM = f"SELECT {PACK_ROW} FROM packs WHERE stream_id = $1 AND block >= $2 ORDER BY block"
PACK_BEFORE = (
    "SELECT body FROM packs WHERE stream_id = $1 AND block < $2 ORDER BY block DESC LIMIT 1"
)
PACKS_OF_STREAMS = f"SELECT {PACK_ROW} FROM packs WHERE stream_id BETWEEN $1 AND $2"
PACKS_OF_ANY = f"SELECT {PACK_ROW} FROM packs WHERE stream_id = ANY($1::text[])"
#: blocks seek the index; the positions skip packs wholly outside (after, bound]
IN_RANGE = "block BETWEEN $1 AND $2 AND last_position > $3 AND first_position <= $4"
PACKS_BETWEEN = f"SELECT {PACK_ROW} FROM packs WHERE {IN_RANGE}"
#: as_of=<time>, in one statement: the last position of the packs wholly at or before
#: the time ($5) within ($3, $4], then the rows of the packs the time or the bound cuts
PACKS_AT = f"""
SELECT NULL, NULL, NULL::bytea, NULL::bigint, NULL::bigint, NULL::int, NULL, NULL,
    max(last_position) FROM packs
WHERE {IN_RANGE} AND last_at <= $5 AND last_position <= $4
UNION ALL
SELECT {CUT_ROW}, NULL FROM packs WHERE {IN_RANGE}
    AND (last_at IS NULL OR (first_at <= $5 AND (last_at > $5 OR last_position > $4)))
"""
#: the last event row at or before a time (``schema.POSITION_AT``) and the row after it
POSITION_AND_NEXT = f"""
WITH q(p) AS ({POSITION_AT})
SELECT p, (SELECT min(position) FROM events WHERE position > p) FROM q
"""
PACKS_BETWEEN_KEYED = (
    f"SELECT {PACK_ROW} FROM packs WHERE stream_id = ANY($5::text[]) AND {IN_RANGE} "
    f"UNION SELECT {PACK_ROW} FROM packs WHERE correlation_id = ANY($5::text[]) AND {IN_RANGE}"
)
INSERT_PACKS = (
    "INSERT INTO packs (stream_id, block, correlation_id, first_position, last_position, "
    "events, body, first_at, last_at) SELECT * FROM unnest($1::text[], $2::bigint[], "
    "$3::text[], $4::bigint[], $5::bigint[], $6::int[], $7::bytea[], $8::text[], $9::text[]) "
    "ON CONFLICT (stream_id, block) DO UPDATE SET correlation_id = excluded.correlation_id, "
    "first_position = excluded.first_position, last_position = excluded.last_position, "
    "events = excluded.events, body = excluded.body, first_at = excluded.first_at, "
    "last_at = excluded.last_at"
)
#: one compaction of a stream at a time, across nodes: a session is packed again at each
#: turn's end, and two nodes packing it at once could each read what the other replaces
LOCK_STREAM = "SELECT pg_advisory_xact_lock(hashtext('packs:' || $1))"
STREAM_EVENTS = f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY version"
PAGE = f"SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
WINDOW_PAGE = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 AND position <= $2 "
    "ORDER BY position LIMIT $3"
)


def packs_between(after: int, bound: int, keys: frozenset[str] | None) -> tuple[str, list[Any]]:
    """The pack rows that may hold events in ``(after, bound]`` under ``keys``."""
    high = min(bound, NO_BOUND)
    span = [block_of(after + 1), block_of(high), after, high]
    if keys is None:
        return PACKS_BETWEEN, span
    return PACKS_BETWEEN_KEYED, [*span, list(keys)]


class PostgresPacks:
    """The pack reads of ``eventstore/packed_reads.py``, through the readers' pool."""

    def __init__(self, fetch: Callable[..., Awaitable[list[Any]]]) -> None:
        self._fetch = fetch

    async def packs_of(self, stream_id: str, bound: int = NO_BOUND) -> list[Any]:
        return await self._fetch(PACKS_OF, stream_id, bound)

    async def packs_between(self, after: int, bound: int, keys: frozenset[str] | None) -> list[Any]:
        query, params = packs_between(after, bound, keys)
        return await self._fetch(query, *params)

    async def packs_of_streams(self, low: str, high: str) -> list[Any]:
        return await self._fetch(PACKS_OF_STREAMS, low, high)

    async def stored_at(self, timestamp: str) -> tuple[int, int | None]:
        (row,) = await self._fetch(POSITION_AND_NEXT, timestamp)
        return int(row[0]), None if row[1] is None else int(row[1])

    async def packs_at(
        self, after: int, bound: int, timestamp: str
    ) -> tuple[int | None, list[Any]]:
        span = [block_of(after + 1), block_of(bound), after, bound, timestamp]
        rows = await self._fetch(PACKS_AT, *span)
        return rows[0][8], [tuple(r[:8]) for r in rows[1:]]


async def compact(conn: asyncpg.Connection, stream_ids: Iterable[str]) -> int:
    """Pack the events of these streams (``compaction.compaction``) in one transaction; the
    rows moved."""
    moved = 0
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = off")
        for stream_id in stream_ids:
            await conn.execute(LOCK_STREAM, stream_id)  # then each read sees the last one's
            rows = [row_to_event(r) for r in await conn.fetch(STREAM_EVENTS, stream_id)]
            packed: list[RecordedEvent] = []
            before = last_anchor(None)
            first = tail_from(rows)
            if repacked(stream_id) and rows:
                packed = unpack_all(await conn.fetch(PACKS_FROM, stream_id, first))
                body = await conn.fetchval(PACK_BEFORE, stream_id, first)
                before = last_anchor(None if body is None else bytes(body))
            packs, gone = compaction(rows, packed, before)
            if not gone:
                continue
            await conn.execute(
                INSERT_PACKS,
                [p.stream_id for p in packs],
                [p.block for p in packs],
                [p.correlation_id for p in packs],
                [p.first_position for p in packs],
                [p.last_position for p in packs],
                [p.count for p in packs],
                [p.body for p in packs],
                [p.first_at for p in packs],
                [p.last_at for p in packs],
            )
            if packed:  # a block no pack holds any more: none yet (events only join packs)
                await conn.execute(
                    "DELETE FROM packs WHERE stream_id = $1 AND block >= $2 "
                    "AND NOT block = ANY($3::bigint[])",
                    stream_id,
                    first,
                    [p.block for p in packs],
                )
            await conn.execute(
                "DELETE FROM events WHERE position = ANY($1::bigint[])", [e.position for e in gone]
            )
            moved += len(gone)
    return moved


async def packed_among(
    conn: Any,
    ids: Collection[str],
    found: dict[str, RecordedEvent],
    targets: Mapping[str, str] | None = None,
) -> None:
    """Add to ``found`` (the rows among ``ids``, by event id) the other ``ids`` packed in
    the runs those rows are of, or in the runs their requests append to (``targets``:
    event id -> stream id; ``compaction.runs_to_unpack`` says why both)."""
    missing = set(ids).difference(found)
    runs = runs_to_unpack(missing, found.values(), targets)
    if not runs:
        return
    for event in unpack_all(await conn.fetch(PACKS_OF_ANY, runs)):
        if event.event_id in missing:
            found[event.event_id] = event


async def with_packs(
    conn: Any, page: list[RecordedEvent], mark: tuple[str, int], full: bool, limit: int
) -> list[RecordedEvent]:
    """A rebuild's page in ``(stream_id, version)`` order, with its packed events: at
    most ``limit`` of them and one run more (``packmerge.merge_streams``)."""
    kept, bound = stream_span(page, mark, full, limit)
    rows = await conn.fetch(PACKS_OF_STREAMS, mark[0], bound[0])
    return merge_streams(kept, rows, mark, bound, limit) if rows else list(kept)


async def log_page(conn: Any, after: int, limit: int) -> list[RecordedEvent]:
    """The next ``limit`` events in position order or fewer, packed ones included, for a
    rebuild: its rows within ``packmerge.rows_window`` (or the first row after it)."""
    window = rows_window(after, limit, None)
    stored = [row_to_event(r) for r in await conn.fetch(WINDOW_PAGE, after, window, limit)]
    if not stored:
        stored = [row_to_event(r) for r in await conn.fetch(PAGE, after, 1)]
    bound = page_bound(stored, after, limit, None, None)
    query, params = packs_between(after, bound, None)
    rows = await conn.fetch(query, *params)
    if not rows:
        return stored
    packed = unpack_all(rows, (after, bound, 0))
    return merge_page(stored, packed, after=after, bound=bound, limit=limit, keys=None)


async def merged_hashes(conn: Any, start: int, end: int) -> Sequence[tuple[int, str]]:
    """``(position, hash)`` of every event in ``(start, end]``, packed ones too."""
    rows = await conn.fetch(
        "SELECT position, hash FROM events WHERE position > $1 AND position <= $2 "
        "ORDER BY position",
        start,
        end,
    )
    by_position: dict[int, str] = {r[0]: r[1] for r in rows}
    packed = unpack_all(
        await conn.fetch(PACKS_BETWEEN, block_of(start + 1), block_of(end), start, end),
        (start, end, 0),
    )
    if not packed:
        return list(by_position.items())
    for e in packed:
        if start < e.position <= end:
            by_position.setdefault(e.position, e.hash)
    return sorted(by_position.items())
