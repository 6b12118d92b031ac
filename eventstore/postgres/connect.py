"""Connecting to PostgreSQL host by host, each within its own short timeout.

asyncpg spends one ``timeout`` across every host of a multi-host URI
(``postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write``), so a
first host that accepts TCP and then never answers (a frozen primary in a
failover) uses all of it and the new primary is never tried. Here each host
gets ``per_host_timeout_s`` of its own: the frozen one is skipped after that
and the next is tried, with the URI's ``target_session_attrs`` kept (asyncpg
checks it per host; ``prefer-standby`` tries every host for a standby first,
then takes any). When no host will do, the error says what each host did,
so a 503 can say "no writable PostgreSQL host" when a standby answered
rather than the last host's "connection refused".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from asyncpg import connect_utils

from sessionstream.eventstore.postgres.errors import DRIVER_ERRORS, NoUsableHost, translate_pg_error

#: attributes that want a primary: a standby answering is "no writable host"
_WRITABLE = ("read-write", "primary")


def hosts_of(dsn: str) -> tuple[list[tuple[str, int | None]], str]:
    """The URI's hosts (unix socket paths have no port) and its ``target_session_attrs``."""
    addrs, params = connect_utils._parse_connect_dsn_and_args(
        dsn=dsn,
        host=None,
        port=None,
        user=None,
        password=None,
        passfile=None,
        database=None,
        ssl=None,
        service=None,
        servicefile=None,
        direct_tls=None,
        server_settings=None,
        target_session_attrs=None,
        krbsrvname=None,
        gsslib=None,
    )
    hosts: list[tuple[str, int | None]] = [
        (a, None) if isinstance(a, str) else (str(a[0]), int(a[1])) for a in addrs
    ]
    return hosts, str(getattr(params.target_session_attrs, "value", "any"))


def _name(host: str, port: int | None) -> str:
    return host if port is None else f"{host}:{port}"


def _what(exc: BaseException, timeout_s: float, want: str) -> str:
    if isinstance(exc, asyncpg.TargetServerAttributeNotMatched):
        return "a read-only standby" if want in _WRITABLE else f"not {want}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


async def connect(
    dsn: str, *, per_host_timeout_s: float, standby_ok: bool = False, **kwargs: Any
) -> asyncpg.Connection:
    """``asyncpg.connect(dsn, **kwargs)``, trying each host within ``per_host_timeout_s``
    (a ``target_session_attrs`` argument overrides the URI's). ``standby_ok``: when the
    URI wants a primary and none answers, a host that answered as a standby will do
    (reads during a failover; :func:`on_standby` tells such a connection)."""
    hosts, attrs = hosts_of(dsn)
    attrs = str(kwargs.pop("target_session_attrs", None) or attrs)
    rounds = ["standby", "any"] if attrs == "prefer-standby" else [attrs]
    failures: dict[str, str] = {}
    standbys: list[tuple[str, int | None]] = []
    for want in rounds:
        for host, port in hosts:
            if _name(host, port) in failures:
                continue  # did not answer in prefer-standby's first round: not again
            # one host: the URI as it is (a socket directory is taken apart differently)
            where = {"host": host, "port": port} if len(hosts) > 1 else {}
            try:
                return await asyncpg.connect(
                    dsn,
                    **where,
                    timeout=per_host_timeout_s,
                    target_session_attrs=want,
                    **kwargs,
                )
            except asyncio.CancelledError:
                raise
            except DRIVER_ERRORS as exc:
                if isinstance(exc, asyncpg.TargetServerAttributeNotMatched):
                    if want in _WRITABLE:
                        standbys.append((host, port))
                    if len(rounds) > 1 and want == "standby":
                        continue  # prefer-standby's first round: a primary, tried next round
                failures[_name(host, port)] = _what(exc, per_host_timeout_s, want)
    for host, port in standbys if standby_ok else ():
        where = {"host": host, "port": port} if len(hosts) > 1 else {}
        with contextlib.suppress(*DRIVER_ERRORS):
            return await asyncpg.connect(
                dsn, **where, timeout=per_host_timeout_s, target_session_attrs="any", **kwargs
            )
    writable = attrs in _WRITABLE
    what = "; ".join(f"{name}: {why}" for name, why in failures.items())
    if writable and standbys:
        message = f"no writable PostgreSQL host ({what})"
    else:
        message = f"no PostgreSQL host answered ({what})"
    raise NoUsableHost(message)


def on_standby(conn: asyncpg.Connection) -> bool:
    """Whether ``conn`` is on a host that takes no writes (a standby, or read-only), as
    the server reports it (``in_hot_standby`` changes when a standby is promoted)."""
    settings = conn.get_settings()
    return (
        getattr(settings, "in_hot_standby", "off") == "on"
        or getattr(settings, "default_transaction_read_only", "off") == "on"
    )


def primary_attrs(dsn: str) -> str | None:
    """What writes ask of a host: the primary. A multi-host URL without
    ``target_session_attrs`` would take whichever host answers first, a standby included."""
    hosts, attrs = hosts_of(dsn)
    return "read-write" if len(hosts) > 1 and attrs == "any" else None


def asks_for_primary(dsn: str) -> bool:
    """Whether the URL's reads want a primary (so a standby is a fallback for them)."""
    try:
        attrs = hosts_of(dsn)[1]
    except (ValueError, *DRIVER_ERRORS):  # a URL asyncpg refuses fails when it is opened
        return False
    return attrs in _WRITABLE


async def writable_host_problem(dsn: str, per_host_timeout_s: float) -> str | None:
    """None when a host takes writes now, else why none does (``/healthz``)."""
    try:
        conn = await connect(
            dsn, per_host_timeout_s=per_host_timeout_s, target_session_attrs=primary_attrs(dsn)
        )
    except DRIVER_ERRORS as exc:
        return translate_pg_error(exc).message
    conn.terminate()
    return None


@contextlib.asynccontextmanager
async def own_connection(
    dsn: str, per_host_timeout_s: float, settings: dict[str, str]
) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the primary outside every pool, closed after; driver errors
    translated."""
    conn: asyncpg.Connection | None = None
    try:
        conn = await connect(
            dsn,
            per_host_timeout_s=per_host_timeout_s,
            target_session_attrs=primary_attrs(dsn),
            server_settings=settings,
        )
        yield conn
    except DRIVER_ERRORS as exc:
        raise translate_pg_error(exc) from exc
    finally:
        if conn is not None:
            conn.terminate()


async def first_schema(conn: asyncpg.Connection) -> str:
    """The schema the DSN points at (``?search_path=...``), else ``public``."""
    path = str(await conn.fetchval("SELECT current_setting('search_path')"))
    for entry in path.split(","):
        name = entry.strip()
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('""', '"')
        if name and name != "$user":
            return name
    return "public"
