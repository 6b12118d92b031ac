"""The server process of ``bench.stream``'s emission, fan-out and memory parts.

``create_app`` in its own process (uvloop, SQLite, as ``sessionstream serve``
runs it) with an engine that writes ``time.perf_counter()`` into each delta's
text, a bare aiohttp websocket loop beside it (the fan-out's baseline), and
the time each ``message.delta`` reached the hub.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from bench.common import install_uvloop
from bench.stream_clients import raise_fd_limit

if TYPE_CHECKING:
    from sessionstream.core.settings import Settings
from sessionstream.engines.base import ExampleInput, ExampleResult, StreamItem, TextDelta, TurnInput
from sessionstream.eventstore.model import RecordedEvent


# the server process -----------------------------------------------------------------------------
class StampEngine:
    """Words that are their own emission time; waits for ``/bench/go`` before the first."""

    name = "stamp"
    model: str | None = None

    def __init__(self, words: int, pace_s: float, stagger: bool) -> None:
        self.words = words
        self.pace_s = pace_s
        self.stagger = stagger
        self.gate = asyncio.Event()

    def go(self) -> None:
        """Release the turns waiting now; later turns wait for the next ``go``."""
        self.gate.set()
        self.gate = asyncio.Event()

    async def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        await self.gate.wait()
        if self.stagger:
            await asyncio.sleep(random.uniform(0, self.pace_s))
        for _ in range(self.words):
            yield TextDelta(f"{time.perf_counter():.7f} ")
            await asyncio.sleep(self.pace_s)

    async def example(self, inp: ExampleInput) -> ExampleResult:
        raise RuntimeError("bench.stream measures chat turns; it never generates examples")

    async def aclose(self) -> None:
        return None


def sample_frame(size: int) -> str:
    """A frame shaped and sized like a run channel's ``message.delta``."""
    frame = {
        "type": "message.delta",
        "runId": "run_" + "0" * 32,
        "sessionId": "00000000-0000-0000-0000-000000000000",
        "seq": 12,
        "position": 123456,
        "at": "2026-01-01T00:00:00.000Z",
        "data": {"text": ""},
    }
    base = len(json.dumps(frame, separators=(",", ":")))
    frame["data"] = {"text": "x" * max(1, size - base)}
    return json.dumps(frame, separators=(",", ":"))


def server_main(pipe: Connection, overrides: dict[str, Any], engine: dict[str, Any]) -> None:
    install_uvloop()
    raise_fd_limit()
    asyncio.run(_serve(pipe, overrides, engine))


def bench_settings(db_path: str, **overrides: Any) -> Settings:
    """A server's settings for the stream benches: no rate limit, room for every run
    and socket they open, engines never timed out, quiet logs."""
    from sessionstream.core.settings import Settings

    return Settings(
        db_path=db_path,
        secret="bench-secret-0123456789abcdef0123456789",
        rate_limit=0.0,
        max_concurrent_runs=1000,
        max_connections_per_user=100_000,
        max_connections=100_000,
        engine_timeout_s=3600.0,
        log_level="WARNING",
        **overrides,
    )


async def _serve(pipe: Connection, overrides: dict[str, Any], engine_args: dict[str, Any]) -> None:
    from sessionstream.server.app import create_app, settle_gc
    from sessionstream.server.keys import STORE
    from sessionstream.services.accounts import create_user

    tmp = tempfile.mkdtemp(prefix="bench-stream-")
    settings = bench_settings(str(Path(tmp) / "stream.db"), **overrides)
    engine = StampEngine(**engine_args)
    app = create_app(settings, engine=engine)
    bare: list[web.WebSocketResponse] = []

    async def go(request: web.Request) -> web.Response:
        engine.go()
        return web.json_response({"ok": True})

    async def bare_socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        bare.append(ws)
        try:
            async for _ in ws:
                pass
        finally:
            bare.remove(ws)
        return ws

    async def bare_go(request: web.Request) -> web.Response:
        """The baseline: one frame after another, ``send_str`` to every socket."""
        count, size = int(request.query["n"]), int(request.query["size"])
        frame = sample_frame(size)
        sockets = list(bare)
        for _ in range(count):
            for ws in sockets:
                await ws.send_str(frame)
        for ws in sockets:
            await ws.send_str("end")
        return web.json_response({"sockets": len(sockets)})

    app.router.add_post("/bench/go", go)
    app.router.add_get("/bench/bare", bare_socket)
    app.router.add_post("/bench/bare/go", bare_go)
    published: dict[int, float] = {}
    hub = app[STORE].hub
    publish = hub.publish

    def timed_publish(events: Iterable[RecordedEvent]) -> None:
        """When each event reached the hub: the commit side of the latency split."""
        batch = list(events)
        now = time.perf_counter()
        for event in batch:
            if event.type == "message.delta":
                published[event.position] = now
        publish(batch)

    hub.publish = timed_publish  # type: ignore[method-assign]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    settle_gc()  # as ``sessionstream serve`` does once it has started
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    _user, token = await create_user(app[STORE], "bench")
    pipe.send((port, token, os.getpid()))
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "stop"
    for ws in list(bare):
        await ws.close()
    await runner.cleanup()
    pipe.send(published)


class BenchServer:
    """The server process: its port, the bench user's token, its pid, and at the end
    the time each ``message.delta`` reached the hub (by position)."""

    def __init__(self, overrides: dict[str, Any], engine: dict[str, Any]) -> None:
        ctx = mp.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self._proc = ctx.Process(target=server_main, args=(child, overrides, engine), daemon=True)
        self.published: dict[int, float] = {}

    def __enter__(self) -> BenchServer:
        self._proc.start()
        if not self._pipe.poll(60):
            raise RuntimeError("the bench server did not start")
        self.port, self.token, self.pid = self._pipe.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self._pipe.send("stop")
        if self._pipe.poll(30):
            self.published = self._pipe.recv()
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()

    def client(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {self.token}"},
            connector=aiohttp.TCPConnector(limit=0),
        )


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
