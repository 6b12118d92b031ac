"""The fault suite's relay does what each fault says, against an echo server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.faultkit.proxy import FaultProxy, ProxyThread


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with ProxyThread() as proxies:
        yield proxies.proxy("127.0.0.1", port)
    server.close()


async def round_trip(proxy: FaultProxy, within: float = 5.0) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        started = time.monotonic()
        writer.write(b"ping")
        async with asyncio.timeout(within):
            data = await reader.readexactly(4)
        return data, time.monotonic() - started
    finally:
        writer.close()


async def test_passes_bytes_and_delays_them(proxy: FaultProxy) -> None:
    assert (await round_trip(proxy))[0] == b"ping"
    proxy.delay(0.2)
    data, took = await round_trip(proxy)
    assert data == b"ping" and took >= 0.4  # 0.2 s each way
    proxy.heal()
    assert (await round_trip(proxy))[0] == b"ping"


async def test_cut_aborts_open_connections(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    proxy.cut()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    assert proxy.cuts == 1
    assert (await round_trip(proxy))[0] == b"ping"


async def test_blackhole_swallows_until_healed_then_drops_what_it_held(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    proxy.blackhole()
    writer.write(b"ping")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.5)
    with pytest.raises(TimeoutError):  # new connections are accepted, and never answered
        await round_trip(proxy, within=0.5)
    proxy.heal()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    assert (await round_trip(proxy))[0] == b"ping"
