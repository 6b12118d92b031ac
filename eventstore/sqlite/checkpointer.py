"""The WAL checkpoint policy: off the append path, on a worker thread and a connection of its own.

By default SQLite checkpoints inside the commit that takes the WAL past
1,000 pages (``wal_autocheckpoint``): that append then waits while pages are
copied into the file and the file is synced, and the appenders queued behind
it wait too. The writer turns that off; this loop checkpoints instead,
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

import asyncio
import contextlib
import sqlite3
import threading

#: seconds between checkpoints; one with nothing new in the WAL costs a look at its index
INTERVAL_S = 1.0
#: a WAL that grew past this while readers held it is cut back to it once checkpointed
JOURNAL_SIZE_LIMIT = 64 << 20


class Checkpointer:
    """Checkpoints the WAL every ``interval_s`` on a worker thread, with its own connection.

    ``run`` is the loop; the store's supervisor owns it (``wal-checkpoint``),
    so a checkpoint that raises is logged, counted and the loop restarted with
    a fresh connection, instead of checkpointing stopping for good while the
    WAL grows.
    """

    def __init__(self, path: str, *, interval_s: float = INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        #: checkpoints run (for tests and metrics)
        self.runs = 0
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # a step still on its thread when the store closes

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await asyncio.to_thread(self.step)

    def step(self) -> tuple[int, int]:
        with self._lock:
            try:
                if self._conn is None:
                    conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA busy_timeout=1000")
                    conn.execute("PRAGMA synchronous=FULL")
                    self._conn = conn
                return self.checkpoint(self._conn)
            except BaseException:
                self._close()  # the restarted loop opens a fresh connection
                raise

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """One ``PASSIVE`` checkpoint: (WAL frames, frames copied into the file)."""
        _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.runs += 1
        return int(frames), int(copied)
