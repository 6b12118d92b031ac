"""A rebuild's fold of the whole PostgreSQL log, in pages whatever its size.

The read models are emptied and folded again from the log, stream by stream
(``StreamFold``: one page and one stream's documents in memory), then the
projections keyed across streams (users' usage, tokens) in a second read in
log order, holding their documents, never their events. The caller holds the
head lock in its own transaction (``maintenance.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from sessionstream.eventstore.model import Doc, RecordedEvent, row_to_event, split_kept
from sessionstream.eventstore.packmerge import first_rows, read_enough
from sessionstream.eventstore.postgres import schema as sql
from sessionstream.eventstore.postgres.packs import log_page, with_packs
from sessionstream.eventstore.projector import Projection, Refold, StreamFold, per_stream
from sessionstream.eventstore.snapshots import Snapshot

#: a rebuild reads the log this many events at a time, stream by stream (``StreamFold``),
#: then in log order for the projections keyed across streams. The page is where the
#: memory goes: SQLite's rebuild at 10^6 events peaked at 167 MB with pages of 2,000
#: events and 4 MiB, 115 MB with these (docs/explanation/scale.md)
REBUILD_PAGE = 500
REBUILD_BYTES = 1 << 20

#: a page of the log in (stream, version) order, ending at REBUILD_PAGE events or
#: REBUILD_BYTES of stored JSON
_STREAM_PAGE = (
    "WITH sized AS (SELECT position, stream_id, version, "
    "octet_length(data) + octet_length(metadata) AS size FROM events "
    "WHERE (stream_id, version) > ($1, $2) ORDER BY stream_id, version LIMIT $3), "
    "running AS (SELECT position, SUM(size) OVER (ORDER BY stream_id, version) "
    "AS total, ROW_NUMBER() OVER (ORDER BY stream_id, version) AS n FROM sized) "
    f"SELECT {sql.EVENT_COLUMNS} FROM events WHERE position IN "
    "(SELECT position FROM running WHERE n = 1 OR total <= $4) "
    "ORDER BY stream_id, version"
)


async def refold(
    conn: asyncpg.Connection, projections: Sequence[Projection], snapshot_every: int
) -> int:
    """Fold the whole log into emptied read-model tables; returns the events folded."""
    # hold=False: the usage projection keys every event its user made, so holding
    # those events for the end held most of the log (what SQLite's rebuild did too)
    fold = StreamFold(projections, snapshot_every, hold=False)
    count = 0
    mark: tuple[str, int] = ("", 0)
    while True:
        # a page may end mid-stream, so its bound is its last row; the empty page at
        # the end takes the packed deltas after the last stream's last row
        rows = await _stream_rows(conn, mark)
        events = await with_packs(conn, rows, mark, bool(rows), REBUILD_PAGE)
        if not events:
            break
        await write_docs(conn, *fold.feed(events))
        count += len(events)
        mark = (events[-1].stream_id, events[-1].version)
    await write_docs(conn, *fold.finish())
    await _refold_in_log_order(conn, projections, snapshot_every)
    return count


async def _stream_rows(conn: asyncpg.Connection, mark: tuple[str, int]) -> list[RecordedEvent]:
    """The rows of the next page by (stream id, version), as many as it keeps
    (``packmerge.first_rows``)."""
    first = first_rows(REBUILD_PAGE)
    rows = [row_to_event(r) for r in await conn.fetch(_STREAM_PAGE, *mark, first, REBUILD_BYTES)]
    if read_enough(rows, mark, REBUILD_PAGE):
        return rows
    return [
        row_to_event(r) for r in await conn.fetch(_STREAM_PAGE, *mark, REBUILD_PAGE, REBUILD_BYTES)
    ]


async def _refold_in_log_order(
    conn: asyncpg.Connection, projections: Sequence[Projection], snapshot_every: int
) -> None:
    across = [p for p in projections if not per_stream(p)]
    if not across:
        return
    fold = Refold(across, snapshot_every)
    after = 0
    while page := await _log_page(conn, after):
        await write_docs(conn, [], fold.page(page)[1])
        after = page[-1].position
    await write_docs(conn, fold.projector.documents, [])


async def write_docs(conn: asyncpg.Connection, docs: list[Doc], snapshots: list[Snapshot]) -> None:
    if docs or snapshots:
        await conn.execute(sql.WRITE_DOCS, *sql.doc_arrays(docs), *sql.snapshot_arrays(snapshots))
        await drop_unkept(conn, docs)


async def drop_unkept(conn: asyncpg.Connection, docs: Sequence[Doc]) -> None:
    """Remove the rows of the documents just written that the store does not keep.

    They are upserted with the rest first: the function that writes a batch
    (``write_batch_at_head``) only upserts, and a page of a rebuild or an import
    may end a run whose live row an earlier page wrote. A row left behind (a
    crash between the two) is harmless: it is the document the fold gives.
    """
    _, unkept = split_kept(docs)
    if unkept:
        await conn.execute(sql.DELETE_DOCS, [k for k, _ in unkept], [k for _, k in unkept])


async def _log_page(conn: asyncpg.Connection, after: int) -> list[RecordedEvent]:
    """The next ``REBUILD_PAGE`` events in position order, packed deltas included."""
    return await log_page(conn, after, REBUILD_PAGE)
