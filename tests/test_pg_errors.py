"""Every error asyncpg can raise, injected where the store meets the driver.

The classes are enumerated from asyncpg's exception hierarchy (every
exception class its modules define, warnings and private signals aside),
plus the transport errors the driver lets through. Each one, raised once by
the reader's or the writer's connection, must come out as a 503
``storage_unavailable`` with ``Retry-After`` or a clear 4xx, never a 500;
the next request must work; and a connection the error may have broken
must be closed, not handed out again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sessionstream.core.errors import SessionStreamError, StorageUnavailable
from sessionstream.eventstore.model import NewEvent
from sessionstream.server.keys import STORE
from tests.pg import DSN, served_session, throwaway_schema
from tests.supervision.helpers import wait_for

asyncpg = pytest.importorskip("asyncpg")

from asyncpg.connection import Connection  # noqa: E402

from sessionstream.eventstore.postgres import PostgresEventStore  # noqa: E402
from sessionstream.eventstore.postgres.connect import connect, hosts_of, on_standby  # noqa: E402
from sessionstream.eventstore.postgres.errors import (  # noqa: E402
    NoUsableHost,
    broken,
    transient,
    translate_pg_error,
)

pytestmark = pytest.mark.postgres

S = "/api/campaigns/ai-chat-sessions"
T = TypeVar("T")


def _subclasses(cls: type[BaseException]) -> Iterator[type[BaseException]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def driver_errors() -> list[BaseException]:
    """One instance of every exception class asyncpg defines, and the transport errors."""
    classes = {
        c
        for c in _subclasses(Exception)
        if c.__module__.split(".")[0] == "asyncpg"
        and not issubclass(c, Warning)  # notices, never raised
        and not c.__name__.startswith("_")  # connect_utils' internal host-switch signals
    }
    errors: list[BaseException] = [c("injected") for c in sorted(classes, key=lambda c: c.__name__)]
    errors += [
        ConnectionResetError("injected"),
        ConnectionRefusedError("injected"),
        BrokenPipeError("injected"),
        TimeoutError(),
        NoUsableHost("no writable PostgreSQL host (a:5432: a read-only standby)"),
    ]
    return errors


ERRORS = driver_errors()


def test_the_enumeration_finds_asyncpgs_whole_hierarchy() -> None:
    names = {type(e).__name__ for e in ERRORS}
    # a few from each branch: server errors, interface, internal client, protocol buffer
    assert {"DiskFullError", "InterfaceError", "InternalClientError"} <= names
    assert {"TargetServerAttributeNotMatched", "ProtocolError", "BufferError"} <= names
    assert len(ERRORS) > 250


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_driver_error_is_a_503_with_retry_after_or_a_4xx(error: BaseException) -> None:
    translated = translate_pg_error(error)
    assert isinstance(translated, SessionStreamError)
    if translated.status == 503:
        assert isinstance(translated, StorageUnavailable) and translated.retry_after > 0
    else:
        assert 400 <= translated.status < 500, (type(error).__name__, translated.status)


def test_the_503_says_what_is_true() -> None:
    standby = translate_pg_error(asyncpg.TargetServerAttributeNotMatched("x"))
    assert "no writable PostgreSQL host" in standby.message
    read_only = translate_pg_error(asyncpg.exceptions.ReadOnlySQLTransactionError("x"))
    assert "no writable PostgreSQL host" in read_only.message
    assert "did not answer" in translate_pg_error(TimeoutError()).message


class Injector:
    """Makes the next statement of one role's connections raise ``error``, once."""

    METHODS = ("fetch", "fetchval", "fetchrow", "execute")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.error: BaseException | None = None
        self.role = ""
        self.matching = ""
        self.hit: Any = None
        for name in self.METHODS:
            monkeypatch.setattr(Connection, name, self._wrap(getattr(Connection, name)))

    def arm(self, error: BaseException, role: str, matching: str = "") -> None:
        self.error, self.role, self.matching, self.hit = error, role, matching, None

    def _wrap(self, original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def method(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            error = self.error
            if (
                error is not None
                and conn.get_settings().application_name.split(":")[0]
                == f"sessionstream-{self.role}"
                and self.matching in query
            ):
                self.error, self.hit = None, conn
                raise error
            return await original(conn, query, *args, **kwargs)

        return method


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_pgerr"):
        yield name


async def _check_answer(r: Any, error: BaseException) -> None:
    name = type(error).__name__
    body = await r.json()
    assert r.status != 500 and body.get("error", {}).get("code") != "internal_error", name
    if r.status == 503:
        assert body["error"]["code"] == "storage_unavailable", (name, body)
        assert int(r.headers["Retry-After"]) >= 1, name
    elif r.status != 200:  # the writer may retry past a refusal on its sure path
        assert 400 <= r.status < 500, (name, r.status, body)


async def test_every_driver_error_on_a_read_answers_cleanly_and_the_next_read_works(
    schema: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, h, sid = await served_session(schema, tmp_path, aiohttp_client)
    inject = Injector(monkeypatch)
    for error in ERRORS:
        inject.arm(error, "reader", "FROM docs")
        r = await client.get(f"{S}/{sid}", headers=h)
        assert inject.hit is not None, type(error).__name__
        await _check_answer(r, error)
        # storage away for now (a failover): the read waited and was tried again
        assert (r.status == 200) == transient(error), (type(error).__name__, r.status)
        if broken(error):
            assert inject.hit.is_closed(), f"{type(error).__name__} left its connection open"
        r = await client.get(f"{S}/{sid}", headers=h)
        assert r.status == 200, (type(error).__name__, await r.text())


async def test_every_driver_error_on_a_write_answers_cleanly_and_the_next_write_works(
    schema: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, h, sid = await served_session(schema, tmp_path, aiohttp_client)
    store = client.app[STORE]
    inject = Injector(monkeypatch)
    for n, error in enumerate(ERRORS):
        inject.arm(error, "writer")
        r = await client.patch(f"{S}/{sid}", json={"title": f"t{n}"}, headers=h)
        assert inject.hit is not None, type(error).__name__
        await _check_answer(r, error)
        if transient(error):  # the write waited for storage and was written again
            assert r.status == 200, (type(error).__name__, await r.text())
        if broken(error):
            assert inject.hit.is_closed(), f"{type(error).__name__} left its connection open"
            assert store._writer.conn is not inject.hit
        r = await client.patch(f"{S}/{sid}", json={"title": f"again {n}"}, headers=h)
        assert r.status == 200, (type(error).__name__, await r.text())
        assert (await r.json())["session"]["title"] == f"again {n}"


async def test_the_pump_and_the_poll_survive_every_driver_error(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresEventStore(DSN, schema=schema, pool_size=2, poll_interval_s=0.05)
    await store.open()
    try:
        inject = Injector(monkeypatch)
        for n, error in enumerate(ERRORS[::7]):
            inject.arm(error, "reader", "log_head")  # the poll's head read
            await wait_for(lambda: inject.hit is not None)
            result = await store.append("s-1", [NewEvent("x", {"n": n})])
            position = result.events[-1].position
            await wait_for(lambda: store.hub.published_position >= position)  # noqa: B023
        assert store.supervisor.unhealthy() == {}
    finally:
        await store.close()


# connecting host by host --------------------------------------------------------------


class FrozenHost:
    """A TCP listener that accepts and then never says a word: a SIGSTOPped primary."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def _pg() -> tuple[str, int]:
    host, port = hosts_of(DSN)[0][0]
    assert port is not None
    return host, port


def _multi(*hosts: tuple[str, int], attrs: str = "read-write") -> str:
    rest = DSN.split("@", 1)[1].split("/", 1)[1]
    user = DSN.split("//", 1)[1].split("@", 1)[0]
    spec = ",".join(f"{h}:{p}" for h, p in hosts)
    sep = "&" if "?" in rest else "?"
    return f"postgresql://{user}@{spec}/{rest}{sep}target_session_attrs={attrs}"


async def test_a_frozen_first_host_is_skipped_after_the_per_host_timeout() -> None:
    frozen = FrozenHost()
    try:
        dsn = _multi(("127.0.0.1", frozen.port), _pg())
        # asyncpg alone spends its one timeout on the frozen host and never tries the next
        with pytest.raises(TimeoutError):
            await asyncpg.connect(dsn, timeout=1.0)
        conn = await connect(dsn, per_host_timeout_s=1.0)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        frozen.close()


async def test_no_host_answering_names_what_each_host_did() -> None:
    frozen = FrozenHost()
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    dead_port = refused.getsockname()[1]
    refused.close()  # nothing listens there now
    try:
        dsn = _multi(("127.0.0.1", frozen.port), ("127.0.0.1", dead_port))
        with pytest.raises(NoUsableHost) as caught:
            await connect(dsn, per_host_timeout_s=0.5)
        message = translate_pg_error(caught.value).message
        assert f"127.0.0.1:{frozen.port}: no answer within 0.5s" in message
        assert f"127.0.0.1:{dead_port}: connection refused" in message
    finally:
        frozen.close()


async def test_a_standby_answering_is_no_writable_host() -> None:
    """The machine's server is a primary: a session made read-only stands in for a
    standby (asyncpg asks the same question: is this host read-only?)."""
    with pytest.raises(NoUsableHost) as caught:
        await connect(_multi(_pg(), _pg(), attrs="read-only"), per_host_timeout_s=2.0)
    assert "not read-only" in str(caught.value)
    with pytest.raises(NoUsableHost) as caught:
        await connect(
            _multi(_pg(), _pg()),
            per_host_timeout_s=2.0,
            server_settings={"default_transaction_read_only": "on"},
        )
    message = translate_pg_error(caught.value).message
    assert message.startswith("no writable PostgreSQL host") and "read-only standby" in message


async def test_a_store_opens_past_a_frozen_host(schema: str) -> None:
    frozen = FrozenHost()
    try:
        dsn = _multi(("127.0.0.1", frozen.port), _pg())
        store = PostgresEventStore(dsn, schema=schema, pool_size=2, connect_timeout_s=0.5)
        async with asyncio.timeout(30):
            await store.open()
        try:
            await store.append("s-1", [NewEvent("x", {})])
            assert await store.stream_version("s-1") == 1
        finally:
            await store.close()
    finally:
        frozen.close()


async def test_healthz_names_writes_unavailable_and_recovers(
    schema: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    client, h, sid = await served_session(schema, tmp_path, aiohttp_client)
    store = client.app[STORE]
    r = await client.get("/healthz")
    assert r.status == 200 and (await r.json())["status"] == "ok"
    frozen = FrozenHost()
    good_dsn = store.dsn
    try:
        store.dsn = _multi(("127.0.0.1", frozen.port))  # the primary froze
        store.connect_timeout_s = 0.3
        store.storage_wait_s = 1.0  # the write waits this long for a primary, then is a 503
        store._drop_writer_connection()
        r = await client.patch(f"{S}/{sid}", json={"title": "lost"}, headers=h)
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert "no answer within 0.3s" in (await r.json())["error"]["message"]
        r = await client.get("/healthz")  # reads still work: degraded, not down
        body = await r.json()
        assert r.status == 200 and body["status"] == "degraded", body
        assert body["degraded"]["writes"].startswith("unavailable: no PostgreSQL host answered")
    finally:
        frozen.close()
        store.dsn = good_dsn
    r = await client.get("/healthz")  # the probe finds a writable host again
    assert r.status == 200 and (await r.json()) == {"status": "ok", "head_position": ANY_INT}
    r = await client.patch(f"{S}/{sid}", json={"title": "back"}, headers=h)
    assert r.status == 200


class _AnyInt:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, int)


ANY_INT: Any = _AnyInt()


def test_a_client_that_went_away_is_one_line_not_an_unhandled_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from sessionstream.server.errors import error_for

    closed = mock.Mock()
    closed.is_closing.return_value = True
    request = make_mocked_request("PATCH", f"{S}/x", transport=closed)
    with caplog.at_level(logging.INFO, logger="sessionstream.http"):
        response = error_for(request, ConnectionResetError("Connection lost"))
    assert response.status == 499
    assert "unhandled" not in caplog.text and "the client went away" in caplog.text
    assert all(r.exc_info is None for r in caplog.records)
    caplog.clear()
    open_transport = mock.Mock()
    open_transport.is_closing.return_value = False
    request = make_mocked_request("PATCH", f"{S}/x", transport=open_transport)
    with caplog.at_level(logging.INFO, logger="sessionstream.http"):
        response = error_for(request, ConnectionResetError("a bug of ours"))
    assert response.status == 500 and "unhandled error" in caplog.text  # a live client's


READ_ONLY = {"default_transaction_read_only": "on"}


async def test_reads_fall_back_to_a_standby_only_when_asked() -> None:
    dsn = _multi(_pg(), _pg())
    conn = await connect(dsn, per_host_timeout_s=2.0, server_settings=READ_ONLY, standby_ok=True)
    try:
        assert on_standby(conn) and await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    conn = await connect(dsn, per_host_timeout_s=2.0)
    try:
        assert not on_standby(conn)
    finally:
        await conn.close()


async def test_reads_are_served_by_a_standby_while_writes_fail_and_leave_it_after(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read pool's hosts all answer read-only (as standbys do while the primary is
    gone): reads still work, on connections kept while writes fail, let go once they
    work again (so reads see every commit on the primary again)."""
    store = PostgresEventStore(_multi(_pg(), _pg()), schema=schema, pool_size=2)
    real = store._settings
    monkeypatch.setattr(
        store, "_settings", lambda role: {**real(role), **(READ_ONLY if role == "reader" else {})}
    )
    await store.open()
    try:
        await store.append("s-1", [NewEvent("x", {})])

        async def pid() -> int:
            async with store._reader.connection() as conn:
                assert on_standby(conn)
                return int(conn.get_server_pid())

        store._write_failed = ("no writable PostgreSQL host", 0.0)
        assert await store.stream_version("s-1") == 1
        first = await pid()
        assert await pid() == first  # kept while writes fail
        store._write_failed = None
        await pid()  # let go after this read
        assert await pid() != first
    finally:
        await store.close()


async def test_a_primary_that_freezes_under_open_connections_is_left_for_the_next_host(
    schema: str,
) -> None:
    """Every connection (writer, pool, listener) is open through a relay to the first
    host when it freezes (the relay swallows bytes, answers nothing): each gives up
    within its statement timeout, is closed, and its replacement skips the frozen host
    within the connect timeout. Writes, reads and the event pump go on through the next
    host, in well under asyncpg's one-minute default."""
    from tests.faultkit.proxy import ProxyThread

    with ProxyThread() as relays:
        host, port = _pg()
        relay = relays.proxy(host, port)
        dsn = _multi(("127.0.0.1", relay.port), (host, port))
        store = PostgresEventStore(
            dsn, schema=schema, pool_size=2, connect_timeout_s=0.5, statement_timeout_s=1.0
        )
        await store.open()
        try:
            await store.append("s-1", [NewEvent("x", {})])
            assert relay.links, "the store does not go through the relay"
            relay.blackhole()  # the primary froze: TCP up, nothing answers
            event = NewEvent("x", {})  # one id: a retry after a lost answer is a no-op
            async with asyncio.timeout(30):  # asyncpg's defaults: 60 s per wait
                result = await until_it_works(lambda: store.append("s-1", [event]))
                # a read on a pooled connection that froze fails once; the next is elsewhere
                version = await until_it_works(lambda: store.stream_version("s-1"))
                assert version == result.version == 2
                position = result.events[-1].position
                await wait_for(lambda: store.hub.published_position >= position, within=30)
        finally:
            await store.close()


async def until_it_works(attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` again after each 503, as a client told ``Retry-After`` does."""
    while True:
        try:
            return await attempt()
        except StorageUnavailable as exc:
            assert "did not answer" in exc.message or "PostgreSQL" in exc.message, exc


async def test_a_connection_killed_mid_read_reports_why_not_the_pool() -> None:
    """The server ends a reader's connection during a statement: asyncpg hands the dead
    connection back to its pool at once, so closing it again raises "released back to
    the pool". The 503 must carry the real reason, and the next read must work."""
    from sessionstream.eventstore.postgres.reader import PostgresReader

    reader = PostgresReader(acquire_timeout_s=5)
    reader.pool = await asyncpg.create_pool(DSN, min_size=1, max_size=1)
    killer = await asyncpg.connect(DSN)
    try:
        with pytest.raises(StorageUnavailable) as caught:
            async with reader.connection() as conn:
                pid = conn.get_server_pid()
                sleeping = asyncio.create_task(conn.fetchval("SELECT pg_sleep(5)"))
                await asyncio.sleep(0.2)
                await killer.execute("SELECT pg_terminate_backend($1)", pid)
                await sleeping
        assert "released back to the pool" not in caught.value.message
        async with reader.connection() as conn:
            assert await conn.fetchval("SELECT 1") == 1
    finally:
        await killer.close()
        await reader.pool.close()
