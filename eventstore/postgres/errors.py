"""Driver errors, translated once into the one storage error callers handle."""

from __future__ import annotations

import asyncpg

from sessionstream.core.errors import SessionStreamError, StorageUnavailable

#: what asyncpg raises when the database, or the way to it, fails; ``InternalClientError``
#: ("cannot switch to state ...") comes from a connection broken mid-protocol (a frozen
#: primary in a failover) and once killed a node's event pump
DRIVER_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    TimeoutError,
)


def translate_pg_error(exc: BaseException) -> SessionStreamError:
    """A driver error as the one storage error callers handle (503)."""
    if isinstance(exc, SessionStreamError):
        return exc
    state = str(getattr(exc, "sqlstate", "") or "")
    if state == "53100":
        return StorageUnavailable("the database disk is full: nothing was written")
    if state == "25006":
        return StorageUnavailable("the database is read-only (a standby?): nothing was written")
    if state.startswith(("08", "57")) or isinstance(
        exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError
    ):
        return StorageUnavailable(f"lost the PostgreSQL connection ({exc}); retry")
    if state.startswith("53"):
        return StorageUnavailable(f"PostgreSQL is out of resources ({exc}); retry")
    return StorageUnavailable(f"the database failed: {exc}")
