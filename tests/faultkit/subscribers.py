"""Session subscribers that hop between nodes, resume by position, and count what they got.

Each follows one session's channel over a raw websocket (not the Python
client, which drops repeated frames by itself: here a frame the server sends
twice must be seen and counted). When its connection drops, its node stops
sending anything, even heartbeats, for ``stall_s``, or a heartbeat says the
node's delivery is stalled, it reconnects to a node picked at random with
``after=<last position>``. ``drop()`` aborts the connection with no close
frame, as a client losing its network does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any

import aiohttp

from tests.faultkit.cluster import Cluster


class Subscriber:
    def __init__(self, cluster: Cluster, http: aiohttp.ClientSession, sid: str, seed: int) -> None:
        self.cluster = cluster
        self.http = http
        self.sid = sid
        self.rng = random.Random(seed)
        self.frames: list[dict[str, Any]] = []
        self.cursor = 0
        self.duplicates = 0
        self.connections = 0
        self.drops = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

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
        while True:
            node = self.rng.choice(self.cluster.nodes)
            url = f"{node.ws_url}/api/realtime/sessions/{self.sid}?after={self.cursor}"
            headers = {"Authorization": f"Bearer {self.cluster.token}"}
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
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            finally:
                self._ws = None
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
            position = frame.get("position")
            if not isinstance(position, int):
                continue
            if position <= self.cursor:
                self.duplicates += 1
                continue
            self.cursor = position
            self.frames.append(frame)


async def wait_caught_up(
    subscribers: list[Subscriber], heads: dict[str, int], within: float
) -> None:
    """Until every subscriber has its session's head (what it can still get, it gets)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if all(s.cursor >= heads.get(s.sid, 0) for s in subscribers):
            return
        await asyncio.sleep(0.1)
