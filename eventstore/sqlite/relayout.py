"""Re-laying the events table behind compaction: the holes packed runs leave, closed.

``events`` is a rowid table keyed by position, so its rows lie in position
order, and a run's token deltas lie among other runs' rows and the sessions'
events. Compaction (``eventstore/packing.py``) deletes a finished run's rows
(all but its terminal one) once they are packed. A page that
held rows of several runs and a few rows that stay keeps those rows where
they are: SQLite merges a page with its
neighbours only once it is under a third full, and new rows never land there
(positions only grow). On logs built by ``bench/scale.py`` about a third of the
table's pages, and 40-45% of the event id and time indexes', was left empty
that way: the largest single share of what a finished turn costs on disk.

A *re-layout* rewrites one range of positions in place: the range's rows are
read, deleted and inserted again, the same values under the same positions.
Deleting the whole range frees its pages; the inserts fill fresh ones, as
appends do (measured: the table 35% unused before, 13% after; its indexes 44%
to 12-17%). Nothing a reader can see changes: a transaction sees the range
before or after, with the same rows, so the hash chains, the Merkle tree,
checkpoints, packs and every read are untouched.

A range is worth re-laying once no more deletions will come to it, so the
log is re-laid from the start in steps of ``STEP`` positions, behind a cursor
kept in ``meta`` (``relaid_to``), and a step stops short of the first row that
will leave of a run that has not ended or whose compaction is still queued
(its rows leave later). A run that ended and will not be compacted (raw deltas kept,
or a pack refused) does not hold the cursor back. The store runs a step
between batches when no append waits, after the compactions
(``eventstore/groupcommit.IdleWork``), and one step every ``FORCE_AFTER``
batches otherwise, so a store that is never idle still keeps up (a busy
build of 10^5 events left the cursor 60,000 positions behind when steps
waited for an idle writer). Each step is its own transaction without an fsync of its own
(``schema.unsynced``): one lost to a crash is done again.

SQLite only: PostgreSQL's heap is not ordered by position, and a vacuumed
tuple's space is reused by later inserts.
"""

from __future__ import annotations

import sqlite3

from sessionstream.core.vocabulary import RUN_PREFIX, SESSION_PREFIX, TERMINAL
from sessionstream.eventstore.sqlite.schema import EVENT_COLUMNS, INSERT_EVENT, unsynced

#: positions re-laid per step: ~90 table pages of a chat log; 15-30 ms on a loaded machine
STEP = 1 << 11
#: under a load that never lets the writer idle, one step after this many batches
FORCE_AFTER = 64
#: the ``meta`` key of the cursor: every position up to it has been re-laid
CURSOR_KEY = "relaid_to"

_CURSOR = "SELECT value FROM meta WHERE key = ?"
_SET_CURSOR = (
    "INSERT INTO meta(key, value) VALUES (?, ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)
_HEAD = "SELECT COALESCE(MAX(position), 0) FROM events"
#: the runs with rows in a range that compaction may move (``run.created`` too), and
#: the first of each: a rowid range scan
_LEAVING_STREAMS = (
    "SELECT stream_id, MIN(position) FROM events WHERE position > ? AND position <= ? "
    "AND (substr(stream_id, 1, ?) = ? OR substr(stream_id, 1, ?) = ?) GROUP BY stream_id"
)
#: a stream's newest event's type (a terminal event is always a row)
_LAST_TYPE = "SELECT type FROM events WHERE stream_id = ? ORDER BY version DESC LIMIT 1"
_RANGE = (
    f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? AND position <= ? ORDER BY position"
)
_DELETE = "DELETE FROM events WHERE position > ? AND position <= ?"


def cursor(conn: sqlite3.Connection) -> int:
    row = conn.execute(_CURSOR, (CURSOR_KEY,)).fetchone()
    return int(row[0]) if row else 0


def _end(conn: sqlite3.Connection, start: int, end: int, pending: frozenset[str]) -> int:
    """How far past ``start`` the range may go: short of the first event that may leave
    of a run that is live, or of a run or session that waits to be compacted
    (``pending``). A session not pending is no reason to wait: its rows leave when its
    next turn ends, which may be never (a live turn's run stops the range anyway)."""
    kinds = (start, end, len(RUN_PREFIX), RUN_PREFIX, len(SESSION_PREFIX), SESSION_PREFIX)
    for stream_id, first in conn.execute(_LEAVING_STREAMS, kinds).fetchall():
        if stream_id not in pending:
            if stream_id.startswith(SESSION_PREFIX):
                continue
            last = conn.execute(_LAST_TYPE, (stream_id,)).fetchone()
            if last is not None and last[0] in TERMINAL:
                continue  # ended and not to be compacted (kept, or refused): rows for good
        end = min(end, int(first) - 1)
    return end


def step(
    conn: sqlite3.Connection,
    *,
    size: int = STEP,
    tail: bool = False,
    pending: frozenset[str] = frozenset(),
) -> int:
    """Re-lay the next range after the cursor; returns how many positions it covered.

    A range is a whole ``size`` positions, or at least half of one when a run
    whose rows will still leave cuts it; ``tail`` (a closing store) takes
    what is left up to the head. 0 means nothing to do until another run is
    compacted or the log grows.
    """
    with unsynced(conn):
        start = cursor(conn)
        head = int(conn.execute(_HEAD).fetchone()[0])
        least = 1 if tail else size
        if min(start + size, head) - start < least:
            return 0
        end = _end(conn, start, min(start + size, head), pending)
        if end - start < (1 if tail else size // 2):
            return 0
        rows = conn.execute(_RANGE, (start, end)).fetchall()
        conn.execute(_DELETE, (start, end))
        conn.executemany(INSERT_EVENT, rows)
        conn.execute(_SET_CURSOR, (CURSOR_KEY, str(end)))
        return end - start
