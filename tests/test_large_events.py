"""Events larger than PostgreSQL's ``NOTIFY`` payload limit reach other nodes whole.

``NOTIFY`` carries at most 8,000 bytes; a node that put events in its
notifications would lose or fail every larger one (a long token delta, a big
skeleton). Ours carry only the new head position, and each node reads the
events from the log, so size does not matter. These tests hold that: the
first with store instances (one per node, each with its own ``LISTEN``
connection and pump), an event far larger than the reader's page byte budget
among them; the second end to end, a 20,000-byte token delta streamed by a
model on node A and watched on node B's websocket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sessionstream import projections
from sessionstream.eventstore.model import NewEvent, RecordedEvent
from tests.pg import DSN, throwaway_schema, url_with_schema
from tests.serverproc import ServerProcess, base_env, create_user

asyncpg = pytest.importorskip("asyncpg")

from sessionstream.eventstore.postgres import PostgresEventStore  # noqa: E402

pytestmark = pytest.mark.postgres

#: PostgreSQL's limit on a NOTIFY payload (``NOTIFY`` refuses "payload string too long")
NOTIFY_LIMIT = 8000
S = "/api/campaigns/ai-chat-sessions"


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_large"):
        yield name


async def test_events_over_the_notify_limit_reach_another_node(schema: str) -> None:
    # the reader polls once a minute: within the test only NOTIFY can wake it, and a
    # page budget far under the big events: a page still holds at least one event
    writer = PostgresEventStore(DSN, projections.ALL, schema=schema, pool_size=2)
    reader = PostgresEventStore(
        DSN, projections.ALL, schema=schema, pool_size=2, poll_interval_s=60.0, page_bytes=4096
    )
    await writer.open()
    await reader.open()
    try:
        notified: list[str] = []
        assert reader._lconn is not None
        await reader._lconn.add_listener(
            reader.channel, lambda _c, _p, _ch, payload: notified.append(payload)
        )
        sizes = [NOTIFY_LIMIT + 1, 20_000, 300_000, 10]
        sent = [
            NewEvent("message.delta", {"text": f"{n}:" + "tok " * (size // 4)}, {"n": n})
            for n, size in enumerate(sizes)
        ]
        got: list[RecordedEvent] = []

        async def tail() -> None:
            async for event in reader.subscribe(await reader.head_position()):
                got.append(event)
                if len(got) == len(sent):
                    return

        task = asyncio.create_task(tail())
        await asyncio.sleep(0.1)
        for version, event in enumerate(sent):  # one commit (and one NOTIFY) each
            await writer.append("run-run_big", [event], expected_version=version)
        await asyncio.wait_for(task, 10)
        assert [e.event_id for e in got] == [e.event_id for e in sent]
        assert [e.data for e in got] == [e.data for e in sent]
        assert len(json.dumps(got[0].data)) > NOTIFY_LIMIT
        # what crossed NOTIFY was the head, a few bytes, never the event
        assert notified and all(len(p) < 20 and p.isdigit() for p in notified)
    finally:
        await reader.close()
        await writer.close()


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_large_nodes"):
        yield url_with_schema(name)


async def _call(
    http: aiohttp.ClientSession, node: ServerProcess, token: str, path: str, body: Any
) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.post(node.base_url + path, json=body, headers=headers) as resp:
        payload = await resp.json()
        assert resp.status < 300, (resp.status, payload)
        return payload


async def _deltas(
    http: aiohttp.ClientSession, node: ServerProcess, run: str, tok: str
) -> list[str]:
    """The texts of a run's ``message.delta`` frames on one node, until its end."""
    texts: list[str] = []
    url = f"{node.ws_url}/api/realtime/runs/{run}?token={tok}"
    async with http.ws_connect(url, heartbeat=None, max_msg_size=0) as ws:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            if frame.get("type") == "message.delta":
                texts.append(frame["data"]["text"])
            if frame.get("type") in ("run.completed", "run.failed", "run.canceled"):
                assert frame["type"] == "run.completed", frame
                return texts
    return texts


async def test_a_token_delta_over_the_notify_limit_streams_to_another_nodes_websocket(
    database_url: str, tmp_path: Path
) -> None:
    from tests.fake_openai import Reply, run_fake_openai

    big = "".join(f"word{n} " for n in range(3000))  # ~26,000 bytes, in one model chunk
    assert len(big.encode()) > 3 * NOTIFY_LIMIT
    async with run_fake_openai() as (base_url, fake):
        # the chunk comes 1.5 s into the reply: both websockets are live by then, so
        # node B has it through NOTIFY and its pump, not from a catch-up read
        fake.script(Reply(content=big, piece=len(big), pace_s=1.5))
        store = ["--database-url", database_url]
        token = create_user(store)
        env = base_env(
            SESSIONSTREAM_ENGINE="openai",
            OPENAI_BASE_URL=base_url,
            OPENAI_API_KEY="dummy",
            SESSIONSTREAM_MODEL="fake-model",
            SESSIONSTREAM_DELTA_COALESCE_MS="0",
        )
        node_a = ServerProcess(store, env=env, log_path=tmp_path / "a.log")
        node_b = ServerProcess(store, env=env, log_path=tmp_path / "b.log")
        async with aiohttp.ClientSession() as http:
            await asyncio.to_thread(node_a.start)
            try:
                await asyncio.to_thread(node_b.start)
                try:
                    campaign = await _call(http, node_a, token, "/api/campaigns", {"name": "c"})
                    cid = campaign["campaign"]["id"]
                    path = f"/api/campaigns/{cid}/nodes"
                    seq = (await _call(http, node_a, token, path, {"name": "n"}))["node"]["id"]
                    body = {"campaign_id": cid, "node_id": seq}
                    sid = (await _call(http, node_a, token, S, body))["session"]["id"]
                    turn = await _call(http, node_a, token, f"{S}/{sid}/turn", {"message": "hi"})
                    run, run_token = turn["runId"], turn["publicAccessToken"]
                    on_a, on_b = await asyncio.wait_for(
                        asyncio.gather(
                            _deltas(http, node_a, run, run_token),
                            _deltas(http, node_b, run, run_token),
                        ),
                        60,
                    )
                finally:
                    await asyncio.to_thread(node_b.stop)
            finally:
                await asyncio.to_thread(node_a.stop)
    assert big in on_a  # node A wrote the model's chunk as one delta
    assert on_b == on_a
