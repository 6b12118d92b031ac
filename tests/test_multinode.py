"""Two real server processes on one PostgreSQL: any node serves any subscriber,
and a node's death frees its sessions through another node.

Node A runs the turn; node B's websocket must carry exactly the frames node
A's does (B learns of A's commits only through the database). Then node A is
SIGKILLed mid-turn, and node B must end the run as ``run.failed``
(``interrupted``) and free the session within the lease timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.pg import throwaway_schema, url_with_schema
from tests.serverproc import ServerProcess, base_env, create_user

asyncpg = pytest.importorskip("asyncpg")

pytestmark = pytest.mark.postgres

S = "/api/campaigns/ai-chat-sessions"
LEASE_TTL_S = 2.0
TERMINAL = ("run.completed", "run.failed", "run.canceled")
PROMPT = "Write an intro email for enterprise VPs of Sales about time-to-ROI"


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """A URL whose search_path is a throwaway schema, dropped afterwards."""
    async for schema in throwaway_schema("test_multinode"):
        yield url_with_schema(schema)


@pytest.fixture
def cluster(
    database_url: str, tmp_path: Path
) -> Iterator[tuple[str, ServerProcess, ServerProcess]]:
    """A user's token and two nodes sharing the database and the secret."""
    store = ["--database-url", database_url]
    token = create_user(store)
    env = base_env(
        SESSIONSTREAM_OFFLINE_PACE_MS="20",
        SESSIONSTREAM_LEASE_TTL_S=str(LEASE_TTL_S),
        SESSIONSTREAM_DELTA_COALESCE_MS="0",
    )
    node_a = ServerProcess(store, env=env, log_path=tmp_path / "node-a.log")
    node_b = ServerProcess(store, env=env, log_path=tmp_path / "node-b.log")
    node_a.start()
    try:
        node_b.start()
        try:
            yield token, node_a, node_b
        finally:
            node_b.stop()
    finally:
        node_a.stop()


class Client:
    def __init__(self, http: aiohttp.ClientSession, token: str) -> None:
        self.http = http
        self.h = {"Authorization": f"Bearer {token}"}

    async def call(self, node: ServerProcess, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(
            method, node.base_url + path, json=body, headers=self.h
        ) as resp:
            payload = await resp.json()
            assert resp.status < 300, (resp.status, payload)
            return payload

    async def session(self, node: ServerProcess) -> str:
        campaign = (await self.call(node, "POST", "/api/campaigns", {"name": "c"}))["campaign"]
        path = f"/api/campaigns/{campaign['id']}/nodes"
        seq_node = (await self.call(node, "POST", path, {"name": "n"}))["node"]
        body = {"campaign_id": campaign["id"], "node_id": seq_node["id"]}
        created = await self.call(node, "POST", S, body)
        return str(created["session"]["id"])


async def frames(
    http: aiohttp.ClientSession,
    node: ServerProcess,
    run_id: str,
    token: str,
    into: list[dict[str, Any]],
) -> None:
    """Every data frame of a run's channel until its terminal frame."""
    url = f"{node.ws_url}/api/realtime/runs/{run_id}?token={token}"
    async with http.ws_connect(url, heartbeat=None) as ws:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            if "seq" not in frame or "position" not in frame:
                continue  # a control frame, not an event
            into.append(frame)
            if frame["type"] in TERMINAL:
                return


async def test_node_b_streams_node_a_run_and_frees_it_when_a_dies(
    cluster: tuple[str, ServerProcess, ServerProcess],
) -> None:
    token, node_a, node_b = cluster
    async with aiohttp.ClientSession() as http:
        client = Client(http, token)
        sid = await client.session(node_a)

        # 1. a turn on node A, watched on both nodes: the same frames, in the same order
        started = await client.call(node_a, "POST", f"{S}/{sid}/turn", {"message": PROMPT})
        run_id, run_token = started["runId"], started["publicAccessToken"]
        on_a: list[dict[str, Any]] = []
        on_b: list[dict[str, Any]] = []
        await asyncio.wait_for(
            asyncio.gather(
                frames(http, node_a, run_id, run_token, on_a),
                frames(http, node_b, run_id, run_token, on_b),
            ),
            60,
        )
        assert on_b == on_a
        assert [f["seq"] for f in on_b] == list(range(1, len(on_b) + 1))
        assert on_b[-1]["type"] == "run.completed"
        assert sum(f["type"] == "message.delta" for f in on_b) >= 2
        positions = [f["position"] for f in on_b]
        assert positions == sorted(positions)
        row = (await client.call(node_b, "GET", f"{S}/{sid}"))["session"]
        assert row["task_status"] is None and len(row["messages"]) == 2

        # 2. a second turn on node A; node A dies in the middle of it
        started = await client.call(node_a, "POST", f"{S}/{sid}/turn", {"message": "shorter"})
        run_id, run_token = started["runId"], started["publicAccessToken"]
        watched: list[dict[str, Any]] = []
        watch = asyncio.create_task(frames(http, node_b, run_id, run_token, watched))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if sum(f["type"] == "message.delta" for f in watched) >= 3:
                break
            await asyncio.sleep(0.01)
        run = (await client.call(node_b, "GET", f"/api/runs/{run_id}"))["run"]
        assert run["status"] == "running", "the turn finished before the kill"
        node_a.kill()
        killed = time.monotonic()

        # node B ends the run through the lease and the session is free again
        while time.monotonic() - killed < 4 * LEASE_TTL_S:
            row = (await client.call(node_b, "GET", f"{S}/{sid}"))["session"]
            if row["task_status"] is None:
                break
            await asyncio.sleep(0.05)
        freed_after = time.monotonic() - killed
        assert row["task_status"] is None, "node B never freed the session"
        assert freed_after <= 2 * LEASE_TTL_S, f"freed after {freed_after:.1f}s"
        run = (await client.call(node_b, "GET", f"/api/runs/{run_id}"))["run"]
        assert run["status"] == "failed" and run["error"] == "interrupted"
        await asyncio.wait_for(watch, 10)  # B's subscriber sees the end as an event
        assert watched[-1]["type"] == "run.failed"
        assert watched[-1]["data"] == {"error": "interrupted"}
        assert [f["seq"] for f in watched] == list(range(1, len(watched) + 1))

        # the session is usable at once through the surviving node
        again = await client.call(node_b, "POST", f"{S}/{sid}/turn", {"message": "hi"})
        assert again["runId"] != run_id
