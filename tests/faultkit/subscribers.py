"""Subscribers that hop between nodes, resume by cursor, and count what they got.

A subscriber follows a session's channel (resuming by ``position``, never
ending) or a run's channel with its ``publicAccessToken`` (resuming by
``seq``, ending at the run's terminal event) over a raw websocket: not the
Python client, which drops repeated frames by itself, since here a frame
the server sends twice must be seen and counted. When its connection drops,
its node sends nothing, not even heartbeats, for ``stall_s``, or a heartbeat
says the node's delivery is stalled, it reconnects to a node picked at
random with ``after=<cursor>``. ``drop()`` aborts the connection with no
close frame, as a client losing its network does. A refusal (close 4xxx) is
recorded and ends the subscriber: none is expected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

import aiohttp

from tests.faultkit.cluster import Cluster
from tests.torture.harness import TERMINAL


class Subscriber:
    """Session ``key``'s channel, or with ``run_token`` run ``key``'s."""

    def __init__(
        self,
        cluster: Cluster,
        http: aiohttp.ClientSession,
        key: str,
        seed: int,
        *,
        run_token: str | None = None,
    ) -> None:
        self.cluster = cluster
        self.http = http
        self.key = key
        self.is_run = run_token is not None
        self.token = run_token or cluster.token
        self.stream = f"{'run' if self.is_run else 'session'}-{key}"
        self.field = "seq" if self.is_run else "position"
        self.rng = random.Random(seed)
        self.frames: list[dict[str, Any]] = []
        self.cursor = 0
        self.duplicates = 0
        self.connections = 0
        self.drops = 0
        self.refusals: list[str] = []
        self.ended = False  # a run subscriber that got its run's terminal event
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.ended or bool(self.refusals)

    def start(self, stall_s: float) -> None:
        self._task = asyncio.create_task(self._follow(stall_s))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if self._task.done() and not self._task.cancelled() and self._task.exception():
                raise self._task.exception()  # type: ignore[misc]

    def drop(self) -> None:
        """Abort the connection: no close frame, the client just vanishes."""
        ws = self._ws
        if ws is not None and not ws.closed:
            conn = ws._response.connection  # aiohttp keeps the transport there
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
                self.drops += 1

    async def _follow(self, stall_s: float) -> None:
        channel = "runs" if self.is_run else "sessions"
        headers = {"Authorization": f"Bearer {self.token}"}
        while not self.done:
            node = self.rng.choice(self.cluster.nodes)
            url = f"{node.ws_url}/api/realtime/{channel}/{self.key}?after={self.cursor}"
            try:
                async with self.http.ws_connect(
                    url,
                    headers=headers,
                    heartbeat=None,
                    timeout=aiohttp.ClientWSTimeout(ws_close=1),
                ) as ws:
                    self._ws = ws
                    self.connections += 1
                    await self._receive(ws, stall_s)
                    code = ws.close_code or 0
                    if 4000 <= code < 5000 and code != 4429:
                        self.refusals.append(f"{code} from n{node.index}")
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            finally:
                self._ws = None
            if not self.done:
                await asyncio.sleep(0.05)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, stall_s: float) -> None:
        """Until the connection ends or the node goes quiet; every frame is counted."""
        while True:
            async with asyncio.timeout(stall_s):
                message = await ws.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                return
            frame = json.loads(message.data)
            if frame.get("type") == "heartbeat":
                if frame.get("stalled"):
                    return
                continue
            cursor = frame.get(self.field)
            if not isinstance(cursor, int) or "position" not in frame:
                continue
            if cursor <= self.cursor:
                self.duplicates += 1
                continue
            self.cursor = cursor
            self.frames.append(frame)
            if self.is_run and frame["type"] in TERMINAL:
                self.ended = True
                return


async def wait_caught_up(
    subscribers: list[Subscriber], heads: dict[str, int], within: float
) -> None:
    """Until every session subscriber has its session's head and every run subscriber its
    run's end (what it can still get, it gets)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if all(s.done if s.is_run else s.cursor >= heads.get(s.key, 0) for s in subscribers):
            return
        await asyncio.sleep(0.1)
