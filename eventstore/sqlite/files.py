"""The files beside a SQLite store: who serves it (``<db>.lock``) and who may read them.

One server per file. Two servers on one file each believe the runs in it are
theirs: the second one's start-up recovery ended the first one's live run as
``interrupted``, and the first then answered 409 for that session until it was
restarted. So a server holds an exclusive ``flock`` on ``<db>.lock`` for its
lifetime and writes its pid, host and start time into it, for the refusal a
second server prints. The kernel drops the lock when the process dies, however
it dies, so a crash never leaves a stale lock behind and the file itself is never
removed (removing it would let two servers lock two different files of one name).

Read-only commands (``doctor``, ``verify``, ``export``...) take no lock and work
beside a running server; :func:`holder` only looks.

Every file created here is readable by its owner alone: the log holds token
hashes and everyone's sessions, and SQLite creates the ``-wal`` and ``-shm``
files with the database file's own mode.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from sessionstream.core.errors import StoreInUse

PRIVATE = 0o600
#: a reader's look at the lock holds it for microseconds; a starting server retries
#: this long before it concludes that another server holds the file
ACQUIRE_PATIENCE_S = 0.5


def lock_path(db_path: str) -> Path:
    return Path(f"{db_path}.lock")


def create_private(path: str | os.PathLike[str]) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists (True when created).

    An empty file is a valid empty SQLite database, so the store opens it as if
    SQLite had created it, but with a mode that only the owner can read.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _describe(text: str) -> str:
    """``pid 123 on host, since 2026-...`` from what a holder wrote, or a fallback."""
    try:
        found = json.loads(text)
        return f"pid {found['pid']} on {found['host']}, since {found['started_at']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not said which yet"


class ServerLock:
    """The exclusive lock a server holds on its SQLite file for as long as it runs."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self.path = lock_path(db_path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreInUse` naming the process that has it."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE)
        deadline = time.monotonic() + ACQUIRE_PATIENCE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                    os.close(fd)
                    raise StoreInUse(
                        f"{self.db_path} is already served by {_describe(text)}; "
                        "stop that server or pass another --db"
                    ) from None
                time.sleep(0.02)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the next reader sees no holder, not a dead one
        os.close(fd)  # closing the descriptor drops the lock


def holder(db_path: str) -> str | None:
    """Who serves ``db_path`` now (``pid 123 on host, since ...``), or None.

    Looks without keeping anything: a shared lock taken and dropped at once,
    which a server starting at that instant waits out (``ACQUIRE_PATIENCE_S``).
    """
    try:
        fd = os.open(lock_path(db_path), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            return _describe(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
