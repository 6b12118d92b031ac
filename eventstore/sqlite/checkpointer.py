"""The WAL checkpoint policy: off the append path, on a thread and a connection of its own.

By default SQLite checkpoints inside the commit that takes the WAL past
1,000 pages (``wal_autocheckpoint``): that append then waits while pages are
copied into the file and the file is synced, and the appenders queued behind
it wait too. The writer turns that off; this thread checkpoints instead,
``PASSIVE`` (it never waits for readers or blocks the writer) once a
second: a checkpoint with nothing new to copy is a look at the WAL index.

A larger interval also writes less: a page appended to many times between
two checkpoints (the right edge of the log, of its time-ordered indexes, a
busy stream's heads) is copied into the file once per checkpoint, not once
per 1,000 WAL pages. A second of appends at full rate is a few thousand WAL
frames, so the interval is of the order of the old one under load and far
longer when idle, when it costs nothing. ``docs/explanation/scale.md`` has the arithmetic.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("sessionstream.eventstore")

#: seconds between checkpoints; one with nothing new in the WAL costs a look at its index
INTERVAL_S = 1.0
#: a WAL that grew past this while readers held it is cut back to it once checkpointed
JOURNAL_SIZE_LIMIT = 64 << 20


class Checkpointer:
    def __init__(self, path: str, *, interval_s: float = INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        #: checkpoints run (for tests and metrics)
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.path == ":memory:" or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="sessionstream-checkpoint", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self.interval_s):
                if conn is None:
                    conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA busy_timeout=1000")
                    conn.execute("PRAGMA synchronous=FULL")
                self.checkpoint(conn)
        except sqlite3.Error:
            log.exception("the WAL checkpointer stopped; the close checkpoints the WAL")
        finally:
            if conn is not None:
                conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """One ``PASSIVE`` checkpoint: (WAL frames, frames copied into the file)."""
        _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.runs += 1
        return int(frames), int(copied)
