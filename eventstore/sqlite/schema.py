"""The SQLite file's layout: schema, statements, row codecs and error translation.

Everything here describes the file, not how the store drives it
(``store.py``, ``writer.py``, ``reader.py`` beside it), so maintenance tools and
benchmarks can read and write the same tables without a store.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

from sessionstream.core.errors import SessionStreamError, StorageUnavailable
from sessionstream.core.jsonenc import encoder
from sessionstream.eventstore.hashcodec import encode_hash
from sessionstream.eventstore.merkle import STORED_LEVEL
from sessionstream.eventstore.model import Doc, RecordedEvent
from sessionstream.eventstore.snapshots import Snapshot
from sessionstream.eventstore.textcodec import META_MIN_BYTES, MIN_BYTES, encode

#: 2: ``clock_exceptions`` (``eventstore/clock.py``); a version 1 file gets it on open.
#: 3: ``packs`` (``eventstore/packing.py``): an older build would not read them.
#: 4: the packs' ``first_at`` and ``last_at`` (added to a version 3 file on open)
#: 5: ``docs`` is a rowid table (it was ``WITHOUT ROWID``), and large texts may be
#: deflated BLOBs (``eventstore/textcodec.py``); a version 4 file's docs are moved on open
#: 6: ``events.hash`` and ``streams.hash`` may be 32-byte BLOBs (``eventstore/hashcodec.py``),
#: which an older build would hand out as bytes; a version 5 file's TEXT hashes stay as
#: they are, and read the same beside the BLOBs appended after them
#: 7: no ``streams`` table: a stream's head is its last event, which is always a row
#: (``STREAM_HEAD``); a version 6 file's table is dropped on open. An older build would
#: make it again, empty, and take every stream for new
SCHEMA_VERSION = 7

#: the table schema 7 dropped (``STREAM_HEAD`` says why)
DROP_STREAMS = "DROP TABLE IF EXISTS streams"
#: and the Merkle nodes below ``merkle.STORED_LEVEL`` a version 6 file may hold (the tree
#: stored from level 4 up): never read again, so their pages go back to the file
DROP_UNREAD_NODES = f"DELETE FROM merkle_nodes WHERE level < {STORED_LEVEL}"

#: a ``WITHOUT ROWID`` table keeps at most ~1,000 bytes of a row in its leaf and the rest
#: in overflow pages, so a session document of a few KB left most of a page empty; a
#: rowid table keeps rows up to ~4,000 bytes in the leaf
DOCS_TO_ROWID = """
ALTER TABLE docs RENAME TO docs_v4;
DROP INDEX IF EXISTS docs_listing;
DROP INDEX IF EXISTS docs_active;
"""
DOCS_FROM_V4 = """
INSERT INTO docs SELECT * FROM docs_v4;
DROP TABLE docs_v4;
"""

#: ``events.position`` is a plain ``INTEGER PRIMARY KEY``: the writer hands every
#: position out itself, above the log's head (``HEAD_AND_CLOCK``: the rows' and the
#: packs'), so ``AUTOINCREMENT``'s counter in ``sqlite_sequence`` never chose one; it
#: only cost a read and a write of that table per row (10% of a bulk insert) and a page
#: per commit. A file made before keeps its table as it was: both write the same rows.
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    stream_id      TEXT NOT NULL,
    version        INTEGER NOT NULL,
    event_id       TEXT NOT NULL UNIQUE,
    type           TEXT NOT NULL,
    data           TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    correlation_id TEXT,
    recorded_at    TEXT NOT NULL,
    hash           TEXT NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE INDEX IF NOT EXISTS events_correlation ON events (correlation_id, position)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_recorded_at ON events (recorded_at);
CREATE TABLE IF NOT EXISTS docs (
    kind       TEXT NOT NULL,
    key        TEXT NOT NULL,
    owner      TEXT,
    parent     TEXT,
    created_at TEXT,
    active     INTEGER NOT NULL DEFAULT 0,
    deleted    INTEGER NOT NULL DEFAULT 0,
    version    INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    body       TEXT NOT NULL,
    UNIQUE (kind, key)
);
CREATE INDEX IF NOT EXISTS docs_listing ON docs (kind, owner, parent, created_at, key);
CREATE INDEX IF NOT EXISTS docs_active ON docs (kind, active) WHERE active = 1;
CREATE TABLE IF NOT EXISTS snapshots (
    stream_id TEXT NOT NULL,
    kind      TEXT NOT NULL,
    version   INTEGER NOT NULL,
    position  INTEGER NOT NULL,
    state     TEXT NOT NULL,
    PRIMARY KEY (stream_id, kind, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS merkle_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
-- events whose recorded_at is below an earlier position's (eventstore/clock.py)
CREATE TABLE IF NOT EXISTS clock_exceptions (
    position    INTEGER PRIMARY KEY,
    recorded_at TEXT NOT NULL
);
-- a finished run's token deltas, compacted (eventstore/packing.py, sqlite/packs.py)
CREATE TABLE IF NOT EXISTS packs (
    id             INTEGER PRIMARY KEY,
    stream_id      TEXT NOT NULL,
    block          INTEGER NOT NULL,
    correlation_id TEXT,
    first_position INTEGER NOT NULL,
    last_position  INTEGER NOT NULL,
    events         INTEGER NOT NULL,
    body           BLOB NOT NULL,
    first_at       TEXT,
    last_at        TEXT,
    UNIQUE (stream_id, block)
);
CREATE INDEX IF NOT EXISTS packs_block ON packs (block);
CREATE INDEX IF NOT EXISTS packs_correlation ON packs (correlation_id, block)
    WHERE correlation_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS checkpoints (
    size        INTEGER PRIMARY KEY,
    root        BLOB NOT NULL,
    note        TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
"""

EVENT_COLUMNS = (
    "position, stream_id, version, event_id, type, data, metadata, correlation_id, "
    "recorded_at, hash"
)
DOC_COLUMNS = "kind, key, owner, parent, created_at, active, deleted, version, position, body"

INSERT_EVENT = f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
#: a stream's head: its last event. Compaction packs every event of a stream but its
#: last (``eventstore/compaction.py``), so the last is always a row, and the seek is one
#: probe of ``UNIQUE (stream_id, version)``. A ``streams`` table (schema 6 and before)
#: said the same in a row per stream: 186 bytes a turn, and a B-tree written per commit
STREAM_HEAD = "SELECT version, hash FROM events WHERE stream_id = ? ORDER BY version DESC LIMIT 1"
DELETE_DOC = "DELETE FROM docs WHERE kind = ? AND key = ?"
UPSERT_DOC = (
    f"INSERT INTO docs ({DOC_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT(kind, key) DO UPDATE SET owner = excluded.owner, "
    "parent = excluded.parent, created_at = excluded.created_at, "
    "active = excluded.active, deleted = excluded.deleted, "
    "version = excluded.version, position = excluded.position, body = excluded.body"
)
#: the log's head and newest time, under the write lock (``eventstore/clock.py``): the
#: rows' and the newest block of packs', a few seeks. A position is never handed out
#: twice, even were compaction to move the log's last rows into a pack
#: (``tests/test_sqlite_writer.py``); the pack of the highest block holds the highest
#: packed position, since a pack keeps one block's positions
HEAD_AND_CLOCK = """
WITH p AS (
    SELECT MAX(last_position) AS head, MAX(last_at) AS newest FROM packs
    WHERE block = (SELECT MAX(block) FROM packs)
)
SELECT MAX(COALESCE((SELECT MAX(position) FROM events), 0), COALESCE(p.head, 0)),
       NULLIF(MAX(COALESCE((SELECT MAX(recorded_at) FROM events), ''),
                  COALESCE(p.newest, '')), '')
FROM p
"""
INSERT_CLOCK_EXCEPTION = (
    "INSERT OR REPLACE INTO clock_exceptions (position, recorded_at) VALUES (?, ?)"
)
#: the last position recorded at or before a time: the index's seek, or a later exception
POSITION_AT = """
SELECT COALESCE(MAX(p), 0) FROM (
    SELECT (SELECT position FROM events WHERE recorded_at <= ?1
            ORDER BY recorded_at DESC, position DESC LIMIT 1) AS p
    UNION ALL
    SELECT MAX(position) FROM clock_exceptions WHERE recorded_at <= ?1
)
"""
LAST_SNAPSHOT = "SELECT COALESCE(MAX(version), 0) FROM snapshots WHERE stream_id = ? AND kind = ?"
INSERT_SNAPSHOT = (
    "INSERT OR REPLACE INTO snapshots(stream_id, kind, version, position, state) "
    "VALUES (?, ?, ?, ?, ?)"
)
#: bound parameters per ``IN (...)`` lookup, well under SQLite's limit
LOOKUP_CHUNK = 500

# one encoder, built once (``core/jsonenc.py``): ``json.dumps`` builds one per call
_dumps = encoder(separators=(",", ":"), ensure_ascii=False)


#: a document is written again at every event of its stream, an event once: documents
#: deflate at the fastest level (zlib's 1), events at its default (6)
DOC_LEVEL = 1


def doc_text(doc: Doc) -> str | bytes:
    """A document's stored body: deflated, unless its stream is live.

    A live run's document is written again at every token delta, thousands
    of times a second under load, and deflating it (a compressor primed with
    the preset dictionary, ~9 µs) was a fifth of the writer's CPU per delta.
    Only the last version stays, and the event that ends the run (or the
    session's turn) writes the document once more, no longer active, so what
    a finished turn keeps is deflated as before.
    """
    body = _dumps(doc.body)
    return body if doc.index.active else encode(body, level=DOC_LEVEL)


def doc_row(doc: Doc) -> tuple[Any, ...]:
    ix = doc.index
    return (
        doc.kind,
        doc.key,
        ix.owner,
        ix.parent,
        ix.created_at,
        int(ix.active),
        int(ix.deleted),
        doc.version,
        doc.position,
        doc_text(doc),
    )


def event_row(r: RecordedEvent) -> tuple[Any, ...]:
    data, metadata = r.encoded or (_dumps(r.data), _dumps(r.metadata))
    # a short text is stored as it is: asked here, not in a call per column (``encode``)
    return (
        r.position,
        r.stream_id,
        r.version,
        r.event_id,
        r.type,
        data if len(data) < MIN_BYTES else encode(data),
        metadata if len(metadata) < META_MIN_BYTES else encode(metadata, min_bytes=META_MIN_BYTES),
        r.correlation_id,
        r.recorded_at,
        encode_hash(r.hash),
    )


def snapshot_row(s: Snapshot) -> tuple[Any, ...]:
    return (s.stream_id, s.kind, s.version, s.position, json.dumps(s.state))


def translate_sqlite_error(exc: sqlite3.Error) -> SessionStreamError:
    text = str(exc).lower()
    if "full" in text:
        return StorageUnavailable("the disk is full: nothing was written")
    if "readonly" in text or "read-only" in text:
        return StorageUnavailable("the database file is read-only: nothing was written")
    if "locked" in text or "busy" in text:
        return StorageUnavailable("the database stayed locked by another process; retry")
    return StorageUnavailable(f"the database failed: {exc}")


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction taken at once (``BEGIN IMMEDIATE``: no reader-turned-writer
    deadlock), committed at the end, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def unsynced(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction without an fsync of its own (``synchronous=NORMAL``), for
    what can be rebuilt from the log: the next append's commit makes it durable, and
    one lost to a crash leaves the log as it was before it. Rolled back on error."""
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        with immediate(conn):
            yield conn
    finally:
        conn.execute("PRAGMA synchronous=FULL")
