"""A TCP relay between one node and PostgreSQL that the test can cut, slow down or blackhole.

Network faults are injected here rather than with ``ip netns``: a relay in
the test needs no root, works on any CI runner, and changes state at an
exact moment. The relays run on their own thread and event loop
(:class:`ProxyThread`), so a busy or blocked test loop never delays the
bytes of a node that is supposed to be healthy.

- ``cut()`` aborts every connection at once (RST, no goodbye), as a dropped
  route or a restarted firewall does; the node reconnects.
- ``delay(s)`` delivers every chunk ``s`` later, in order, in both directions.
- ``blackhole()`` accepts connections and swallows their bytes without an
  answer: the node's queries hang, exactly as behind a dead link. PostgreSQL
  keeps its end open, so a transaction the node had begun stays open there.
  ``heal()`` then aborts the blackholed connections (bytes were lost, so
  they cannot be resumed) and lets new ones through.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _Link:
    """One client connection and, unless blackholed from the start, its upstream."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        self.client.transport.abort()
        if self.upstream is not None:
            self.upstream.transport.abort()


class FaultProxy:
    """A relay from a local port to ``target``; every control method is thread-safe."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop = loop
        self.host = host
        self.target_port = port
        self.port = 0
        self.links: set[_Link] = set()
        self.delay_s = 0.0
        self.blackholed = False
        self.cuts = 0
        self._server: asyncio.Server | None = None

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    # control, from any thread ----------------------------------------------------------------
    def cut(self) -> None:
        """Abort every open connection."""
        self._call(self._cut)

    def delay(self, seconds: float) -> None:
        """Deliver every chunk ``seconds`` late (0: no delay)."""
        self._call(lambda: setattr(self, "delay_s", seconds))

    def blackhole(self) -> None:
        """Swallow every byte, of open connections and new ones, without an answer."""
        self._call(lambda: setattr(self, "blackholed", True))

    def heal(self) -> None:
        """No delay; a blackhole ends by aborting the connections whose bytes it ate."""

        def heal() -> None:
            self.delay_s = 0.0
            if self.blackholed:
                self.blackholed = False
                self._cut()

        self._call(heal)

    def close(self) -> None:
        def close() -> None:
            if self._server is not None:
                self._server.close()
            self._cut()

        self._call(close)

    def _call(self, fn: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise TimeoutError("the proxy thread did not answer")

    def _cut(self) -> None:
        for link in list(self.links):
            link.abort()
        self.cuts += bool(self.links)
        self.links.clear()

    # relaying, on the proxy thread -----------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self.links.add(link)
        try:
            if self.blackholed:  # accepted, never answered
                await self._pipe(reader, None, link)
                return
            try:
                up_reader, link.upstream = await asyncio.open_connection(
                    self.host, self.target_port
                )
            except OSError:
                link.abort()
                return
            await asyncio.gather(
                self._pipe(reader, link.upstream, link), self._pipe(up_reader, writer, link)
            )
        finally:
            self.links.discard(link)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, link: _Link
    ) -> None:
        """Copy ``src`` to ``dst`` with the current delay, or drop it while blackholed;
        at the end of ``src`` (after what is queued went out) the whole link is aborted."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                if dst is not None and not self.blackholed:
                    dst.write(data)
                    await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    if not self.blackholed and dst is not None:
                        queue.put_nowait((time.monotonic() + self.delay_s, data))
            queue.put_nowait(None)
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(sender), 30)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await sender
            link.abort()


class ProxyThread:
    """A thread with its own event loop that hosts every :class:`FaultProxy` of a test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proxies: list[FaultProxy] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="fault-proxies")

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for proxy in self.proxies:
            with contextlib.suppress(TimeoutError):
                proxy.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def proxy(self, host: str, port: int) -> FaultProxy:
        """A new relay to ``host:port``, listening on a free local port."""
        proxy = FaultProxy(self.loop, host, port)
        self._run(proxy._start())
        self.proxies.append(proxy)
        return proxy
