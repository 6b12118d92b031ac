"""The statements the SQLite writer runs on its connection, as functions of it.

Apart from ``writer.py`` because they hold none of the writer's state (its
document cache, the ``Known`` heads of its last batch) and make none of its
choices (the fast or the sure path, when to read the heads again): each reads
or writes what its caller's transaction asks, on the one write connection,
so ``SQLiteWriter`` is left the state and the order things happen in. Only the
writer calls them, on the writer thread; a batch's reads run inside its
``BEGIN IMMEDIATE``, so the heads and ids they return are the ones it writes on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence

from sessionstream.eventstore.batch import StreamHead
from sessionstream.eventstore.compaction import targets_of
from sessionstream.eventstore.hashcodec import decode_hash
from sessionstream.eventstore.model import (
    AppendRequest,
    Doc,
    RecordedEvent,
    row_to_event,
    split_kept,
)
from sessionstream.eventstore.packing import unpack_all
from sessionstream.eventstore.packmerge import (
    first_rows,
    merge_page,
    page_bound,
    read_enough,
    rows_window,
)
from sessionstream.eventstore.snapshots import Snapshot
from sessionstream.eventstore.sqlite.packs import PAGE as LOG_PAGE
from sessionstream.eventstore.sqlite.packs import WINDOW_PAGE, packed_among, packs_between_sql
from sessionstream.eventstore.sqlite.schema import (
    DELETE_DOC,
    EVENT_COLUMNS,
    INSERT_EVENT,
    INSERT_SNAPSHOT,
    LOOKUP_CHUNK,
    STREAM_HEAD,
    UPSERT_DOC,
    doc_row,
    event_row,
    snapshot_row,
)
from sessionstream.eventstore.textcodec import stored_size

#: a rebuild reads the log this many events at a time, stream by stream, and writes each
#: document once, when its stream ends (``StreamFold``): memory is one page and one stream.
#: A page of 2,000 events and 4 MiB peaked at 167 MB at 10^6 events, 500 and 1 MiB at
#: 115 MB (bench/results/maintenance.json); the page is where the memory goes
REBUILD_PAGE = 500
REBUILD_BYTES = 1 << 20
BY_STREAM = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE (stream_id, version) > (?, ?) "
    "ORDER BY stream_id, version LIMIT ?"
)


def stream_page(conn: sqlite3.Connection, mark: tuple[str, int]) -> list[RecordedEvent]:
    """The next events by (stream id, version): ``REBUILD_PAGE`` of them, or fewer
    once their stored JSON passes ``REBUILD_BYTES``, or as many as the page keeps
    (``packmerge.first_rows``)."""
    page = _stream_rows(conn, mark, first_rows(REBUILD_PAGE))
    return page if read_enough(page, mark, REBUILD_PAGE) else _stream_rows(conn, mark, REBUILD_PAGE)


def _stream_rows(
    conn: sqlite3.Connection, mark: tuple[str, int], limit: int
) -> list[RecordedEvent]:
    """Up to ``limit`` events by (stream id, version), fewer once their stored JSON
    passes ``REBUILD_BYTES`` (the rows are read one by one)."""
    events: list[RecordedEvent] = []
    size = 0
    cursor = conn.execute(BY_STREAM, (*mark, limit))
    try:
        for row in cursor:
            events.append(row_to_event(row))
            size += stored_size(row[5]) + stored_size(row[6])
            if size >= REBUILD_BYTES:
                break
    finally:
        cursor.close()
    return events


def log_page(conn: sqlite3.Connection, after: int) -> list[RecordedEvent]:
    """The next ``REBUILD_PAGE`` events in position order or fewer, packed ones included:
    the rows within ``packmerge.rows_window`` (or the first row after it)."""
    window = rows_window(after, REBUILD_PAGE, None)
    stored = [row_to_event(r) for r in conn.execute(WINDOW_PAGE, (after, window, REBUILD_PAGE))]
    if not stored:
        stored = [row_to_event(row) for row in conn.execute(LOG_PAGE, (after, 1))]
    bound = page_bound(stored, after, REBUILD_PAGE, None, None)
    rows = conn.execute(*packs_between_sql(after, bound, None)).fetchall()
    if not rows:
        return stored
    packed = unpack_all(rows, (after, bound, 0))
    return merge_page(stored, packed, after=after, bound=bound, limit=REBUILD_PAGE, keys=None)


def docs_without_rowid(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'docs'").fetchone()
    return bool(row) and "WITHOUT ROWID" in row[0].upper()


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), LOOKUP_CHUNK):
        yield values[start : start + LOOKUP_CHUNK]


def read_stream_heads(conn: sqlite3.Connection, names: Iterable[str]) -> dict[str, StreamHead]:
    """The heads of the streams among ``names`` that have events (``STREAM_HEAD``): a seek
    each, since a stream's last event is one index probe away wherever its others are."""
    heads: dict[str, StreamHead] = {}
    for name in names:
        row = conn.execute(STREAM_HEAD, (name,)).fetchone()
        if row is not None:
            heads[name] = StreamHead(row[0], decode_hash(row[1]))
    return heads


def read_stored_events(
    conn: sqlite3.Connection, ids: Iterable[str], requests: Iterable[AppendRequest] = ()
) -> list[RecordedEvent]:
    """The stored events among ``ids``, packed ones too: of the runs a row is of, and of
    the runs ``requests`` (those the ids come from) append to."""
    asked = list(ids)
    found: list[RecordedEvent] = []
    for chunk in _chunks(asked):
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN ({marks})"
        found.extend(row_to_event(row) for row in conn.execute(sql, chunk))
    return packed_among(conn, asked, found, targets_of(requests))


def write_rows(
    conn: sqlite3.Connection,
    records: Sequence[RecordedEvent],
    docs: Iterable[Doc],
    snapshots: Iterable[Snapshot],
) -> None:
    """What a plan (or one group of it) writes: one ``executemany`` per table. The
    streams' new heads are the last of ``records`` (``STREAM_HEAD``)."""
    if records:
        conn.executemany(INSERT_EVENT, [event_row(r) for r in records])
    kept, unkept = split_kept(docs)
    if kept:
        conn.executemany(UPSERT_DOC, [doc_row(d) for d in kept])
    if unkept:  # a run that ended: its live row goes (``DocIndex.kept``)
        conn.executemany(DELETE_DOC, unkept)
    snapshot_rows = [snapshot_row(s) for s in snapshots]
    if snapshot_rows:
        conn.executemany(INSERT_SNAPSHOT, snapshot_rows)
