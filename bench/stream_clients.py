"""The subscriber side the realtime benches share: sessions, runs, sockets, percentiles.

The subscribers are the instrument: their process keeps its garbage collector
out of each measured window (``measuring``).
"""

from __future__ import annotations

import asyncio
import gc
import resource
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp

S = "/api/campaigns/ai-chat-sessions"


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def new_session(http: aiohttp.ClientSession) -> str:
    r = await http.post("/api/campaigns", json={"name": "bench"})
    campaign = (await r.json())["campaign"]["id"]
    r = await http.post(f"/api/campaigns/{campaign}/nodes", json={"name": "n"})
    node = (await r.json())["node"]["id"]
    r = await http.post(S, json={"campaign_id": campaign, "node_id": node})
    return str((await r.json())["session"]["id"])


async def start_runs(http: aiohttp.ClientSession, count: int) -> list[tuple[str, str]]:
    sessions = await asyncio.gather(*(new_session(http) for _ in range(count)))
    runs = []
    for sid in sessions:
        r = await http.post(f"{S}/{sid}/turn", json={"message": "go"})
        body = await r.json()
        assert r.status == 200, body
        runs.append((body["runId"], body["publicAccessToken"]))
    return runs


async def subscribe(
    http: aiohttp.ClientSession, run_id: str, token: str, ready: int
) -> aiohttp.ClientWebSocketResponse:
    """A run-channel socket that has received its first ``ready`` frames (the catch-up)."""
    ws = await http.ws_connect(
        f"/api/realtime/runs/{run_id}?token={token}", heartbeat=None, max_msg_size=0
    )
    for _ in range(ready):
        message = await ws.receive(timeout=60)
        assert message.type == aiohttp.WSMsgType.TEXT, message
    return ws


async def connect_all(
    http: aiohttp.ClientSession, targets: list[tuple[str, str]], ready: int, batch: int = 250
) -> list[aiohttp.ClientWebSocketResponse]:
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    for i in range(0, len(targets), batch):
        chunk = targets[i : i + batch]
        sockets += await asyncio.gather(*(subscribe(http, r, t, ready) for r, t in chunk))
    return sockets


@contextmanager
def measuring() -> Iterator[None]:
    """Keep this process's garbage collector out of the measured window.

    The subscribers here are the instrument: a full collection over the frames
    they hold would stall every socket at once and be charged to the server.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def drain(ws: aiohttp.ClientWebSocketResponse, into: list[tuple[float, str]]) -> None:
    clock = time.perf_counter
    async for message in ws:
        into.append((clock(), message.data))


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
