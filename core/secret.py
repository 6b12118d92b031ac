"""Key files a single node keeps beside its SQLite file (``<db>.secret``, ``<db>.logkey``).

A key file is published whole or not at all: it is written to a private temporary
file in the same directory, flushed to disk, then linked into place, so a crash
during the first start leaves either no file (the next start generates one) or a
complete one, never the empty file that used to make every turn answer 500. The
link refuses to replace a file another process published first; that one wins and
both use it. Files are created readable by their owner alone (0600).

A secret read back is checked for length: a short one is guessable (a 3-character
secret was brute-forced from one run token in under a second), so it stops the
server at start-up and ``doctor`` reports it, rather than signing tokens with it.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from sessionstream.core.errors import ConfigError

#: HS256 wants a key as long as its hash (32 bytes)
MIN_SECRET_CHARS = 32
#: what is generated: 48 random bytes, 64 URL-safe characters
GENERATED_BYTES = 48
PRIVATE = 0o600


def publish(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` atomically with mode 0600; False (and nothing
    changed) when ``path`` already exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)  # unlike rename, never replaces a file published meanwhile
        except FileExistsError:
            return False
    finally:
        os.unlink(temp)
    _sync_directory(path.parent)
    return True


def _sync_directory(directory: Path) -> None:
    """Make the new name itself durable, not only the bytes it names."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def read_or_create(path: Path, generate: Callable[[], str]) -> str:
    """The file's text; generated and published first when there is no file."""
    if not path.exists():
        publish(path, generate())  # a racing process may win: then its text is read
    return path.read_text(encoding="utf-8")


def secret_problem(text: str, path: Path) -> str | None:
    """Why the secret read from ``path`` must not be used, or None."""
    length = len(text.strip())
    if length >= MIN_SECRET_CHARS:
        return None
    found = "is empty" if length == 0 else f"holds only {length} characters"
    return (
        f"the run-token secret {path} {found}; at least {MIN_SECRET_CHARS} are needed "
        "(delete the file to generate a new one at the next start, or set SESSIONSTREAM_SECRET)"
    )


def load_secret(path: Path) -> str:
    """The run-token secret kept in ``path``, generated on first use; a short one
    raises ConfigError (the CLI prints it as one line and exits 2)."""
    text = read_or_create(path, lambda: secrets.token_urlsafe(GENERATED_BYTES)).strip()
    problem = secret_problem(text, path)
    if problem is not None:
        raise ConfigError(problem)
    return text


def loose_mode(path: Path) -> str | None:
    """``0644`` when users other than the owner may read or write ``path``."""
    mode = stat.S_IMODE(path.stat().st_mode)
    return f"{mode:04o}" if mode & 0o077 else None
