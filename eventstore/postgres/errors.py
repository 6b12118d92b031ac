"""Driver errors, translated once into the errors callers handle.

Whatever asyncpg raises becomes a :class:`StorageUnavailable` (503 with
``Retry-After``: the database, or the way to it, failed and a retry may
work) or, when the database refused a value a request carried, a 4xx. What
the 503 says is what happened: "no writable PostgreSQL host" when the host
that answered is a read-only standby, "did not answer within" on a
timeout, not a generic "connection refused".
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import asyncpg
from asyncpg.exceptions._base import DataError as ClientDataError
from asyncpg.pgproto.pgproto import BufferError as ProtocolBufferError

from sessionstream.core.errors import (
    Conflict,
    PayloadTooLarge,
    SessionStreamError,
    StorageUnavailable,
    ValidationFailed,
)


class NoUsableHost(ConnectionError):
    """No host of the URI answered as asked (``connect.py``); the message says what
    each one did."""


#: what asyncpg raises when the database, or the way to it, fails; ``InternalClientError``
#: ("cannot switch to state ...") comes from a connection broken mid-protocol (a frozen
#: primary in a failover) and once killed a node's event pump; the protocol buffer's
#: ``BufferError`` from a message cut short
DRIVER_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    ProtocolBufferError,
    TimeoutError,
)


def broken(exc: BaseException) -> bool:
    """Whether the connection that raised ``exc`` must not be used again.

    A statement the server refused (a constraint, a bad value) leaves its
    connection sound; anything else (a timeout, a protocol or transport
    error, the server going away) may leave it mid-protocol, open but
    unusable, so it is closed and a new one opened.
    """
    if not isinstance(exc, asyncpg.PostgresError):
        return True
    state = str(getattr(exc, "sqlstate", "") or "")
    # 25006: the host is read-only now (demoted in a failover): find the primary again
    return state == "25006" or state.startswith(("08", "57P", "XX"))


def answer_lost(exc: BaseException) -> bool:
    """Whether a statement that raised ``exc`` may have committed all the same.

    A server's error answer to an autocommit statement means it did not
    commit, except one that ends the connection (class 08, or 57P: shut down,
    terminated), which can come after the commit; a transport error or a
    timeout or a cancel on the client means the answer never came. (The
    driver's own ``InterfaceError``s are raised before anything is sent.)
    """
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state.startswith(("08", "57P"))
    return isinstance(exc, (OSError, TimeoutError, asyncio.CancelledError))


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` says storage is away for now and may come back by itself: a host
    gone, refusing or not answering, a read-only host where a primary was (a failover),
    the server shutting down or starting. Such a request waits for storage
    (``eventstore/storagewait.py``); a full disk, a misconfiguration or a refused value
    does not go away by waiting. A translated error is judged by the driver error under it.
    """
    if isinstance(exc, SessionStreamError):
        cause = exc.__cause__
        return isinstance(exc, StorageUnavailable) and cause is not None and transient(cause)
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        # 25006 read-only (demoted), 57014 cancelled by the statement timeout (a host that
        # froze), 57P01-03 shutting down or starting, 08 connection, 53300 too many clients
        return state in ("25006", "57014", "53300") or state.startswith(("08", "57P"))
    return isinstance(
        exc,
        NoUsableHost
        | asyncpg.TargetServerAttributeNotMatched
        | OSError
        | TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.InternalClientError
        | ProtocolBufferError,
    ) and not isinstance(exc, asyncpg.ClientConfigurationError | ClientDataError)


def translate_pg_error(exc: BaseException) -> SessionStreamError:
    """A driver error as the error callers handle: a 503 to retry, or what a request did wrong."""
    if isinstance(exc, SessionStreamError):
        return exc
    if isinstance(exc, NoUsableHost):
        return StorageUnavailable(f"{exc}; retry")
    if isinstance(exc, asyncpg.TargetServerAttributeNotMatched):
        return StorageUnavailable(
            "no writable PostgreSQL host (the host that answered is a read-only standby): "
            "nothing was written; retry"
        )
    state = str(getattr(exc, "sqlstate", "") or "")
    if state == "53100":
        return StorageUnavailable("the database disk is full: nothing was written")
    if state == "25006":
        return StorageUnavailable(
            "no writable PostgreSQL host (this one is read-only, a standby?): "
            "nothing was written; retry"
        )
    if state == "57014" or isinstance(exc, TimeoutError):
        return StorageUnavailable("PostgreSQL did not answer in time; retry")
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return StorageUnavailable(f"the PostgreSQL connection is misconfigured: {exc}")
    if isinstance(exc, ClientDataError):
        # asyncpg could not encode a value a request carried (not the server's class 22)
        return ValidationFailed(f"the database cannot take this value: {exc}")
    if state.startswith(("08", "57")) or isinstance(
        exc,
        OSError | asyncpg.InterfaceError | asyncpg.InternalClientError | ProtocolBufferError,
    ):
        return StorageUnavailable(f"lost the PostgreSQL connection ({exc}); retry")
    if state.startswith("53"):
        return StorageUnavailable(f"PostgreSQL is out of resources ({exc}); retry")
    if state.startswith("40"):
        return StorageUnavailable(f"PostgreSQL aborted the transaction ({exc}); retry")
    if state.startswith("22"):
        return ValidationFailed(f"the database refused a value: {exc}")
    if state.startswith("23"):
        return Conflict(f"the database refused the change: {exc}")
    if state.startswith("54"):
        return PayloadTooLarge(f"the database cannot store something this large: {exc}")
    return StorageUnavailable(f"the database failed: {exc}")


P = ParamSpec("P")
R = TypeVar("R")


def translated(
    method: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """``method`` with its driver errors translated (code that runs on the pool directly)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except DRIVER_ERRORS as exc:
            raise translate_pg_error(exc) from exc

    return wrapper
