"""nginx in front of three nodes: the documented flow, websockets and SSE go through it, and a
client whose node dies under its websocket resumes through it on another node, gap-free.

nginx runs with ``deploy/nginx/sessionstream.conf`` (the file the deployment
guide ships), rendered with the test's ports (``tests/faultkit/nginx.py``).
The failover tests find which node holds the client's websocket (its
``sessionstream_realtime_connections`` gauge), start a turn on another node,
and SIGKILL the holder mid-run. The client reconnects through nginx, which
sends it to a live node, and resumes from its cursor. The time from the kill
to the next frame (the time to resume) and the frames lost and duplicated
are printed; the frames must equal the log's events exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sessionstream.client import Backoff, stream_session
from sessionstream.server.frames import chat_stream_event
from tests.faultkit import checks
from tests.faultkit.cluster import Cluster, Node, cluster
from tests.faultkit.load import new_session
from tests.faultkit.nginx import Nginx
from tests.pg import throwaway_schema
from tests.test_documented_flow import Caller, documented_flow
from tests.torture.harness import SESSIONS
from tests.torture.report import report

pytest.importorskip("asyncpg")
pytestmark = [pytest.mark.postgres, pytest.mark.timeout(300)]

CHROMIUM = Path("/usr/bin/chromium")
FAST = Backoff(base_s=0.01, cap_s=0.05)
NODE_ENV = {"SESSIONSTREAM_LEASE_TTL_S": "2", "SESSIONSTREAM_OFFLINE_PACE_MS": "40"}
GAUGE = re.compile(
    r'^sessionstream_realtime_connections\{channel="(\w+)",transport="(\w+)"\} (\S+)$', re.M
)


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_nginx"):
        yield name


@pytest.fixture
def lb(schema: str, tmp_path: Path) -> Iterator[tuple[Cluster, Nginx]]:
    with cluster(schema, tmp_path, NODE_ENV) as nodes:
        nginx = Nginx(tmp_path, [n.server.port for n in nodes.nodes]).start()
        try:
            yield nodes, nginx
        finally:
            nginx.stop()


async def holders(http: aiohttp.ClientSession, nodes: Cluster, channel: str) -> list[Node]:
    """The nodes holding a websocket of ``channel``, by their own gauges."""
    found = []
    for node in nodes.nodes:
        if not node.running:
            continue
        async with http.get(node.base_url + "/metrics") as r:
            text = await r.text()
        for ch, transport, value in GAUGE.findall(text):
            if ch == channel and transport == "ws" and float(value) > 0:
                found.append(node)
    return found


async def wait_holder(http: aiohttp.ClientSession, nodes: Cluster) -> Node:
    for _ in range(200):
        held = await holders(http, nodes, "session")
        if len(held) == 1:
            return held[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no single node holds the subscriber's websocket")


async def start_turn(http: aiohttp.ClientSession, node: Node, token: str, sid: str) -> str:
    url = f"{node.base_url}{SESSIONS}/{sid}/turn"
    body = {"message": "Write an intro email for enterprise VPs of Sales about time-to-ROI"}
    async with http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["runId"])


def compare(log: list[Any], sid: str, frames: list[dict[str, Any]]) -> tuple[int, int]:
    """(lost, duplicated): the session's stored events the client did not yield, and
    positions it yielded more than once."""
    positions = [f["position"] for f in frames]
    duplicated = len(positions) - len(set(positions))
    last = max(positions)
    expected = [
        json.loads(json.dumps(chat_stream_event(e)))
        for e in log
        if f"session-{sid}" in e.keys and e.position <= last
    ]
    unique = {f["position"]: f for f in frames}
    lost = sum(1 for e in expected if unique.get(e["position"]) != e)
    return lost, duplicated


# the documented flow and both realtime wires, through nginx --------------------------------------
async def test_the_documented_flow_websockets_and_sse_go_through_nginx(
    lb: tuple[Cluster, Nginx],
) -> None:
    nodes, nginx = lb
    headers = {"Authorization": f"Bearer {nodes.token}"}
    async with aiohttp.ClientSession(nginx.base_url) as http:
        sid = await new_session(http, "", nodes.token)
        sse: list[dict[str, Any]] = []
        ws: list[dict[str, Any]] = []
        sse_task = asyncio.create_task(follow_sse(http, sid, headers, sse))
        ws_task = asyncio.create_task(follow_ws(nginx.base_url, sid, nodes.token, ws))
        await documented_flow(Caller(http, headers), sid)
        # one more event, once both channels are live: it must come through on its own
        async with http.patch(f"{SESSIONS}/{sid}", json={"title": "last"}, headers=headers) as r:
            assert r.status == 200
        log = await checks.read_log(nodes.schema)
        head = checks.session_heads(log, [sid])[sid]
        await until(lambda: bool(sse and ws and sse[-1]["position"] == ws[-1]["position"] == head))
        sse_task.cancel()
        ws_task.cancel()
    assert compare(log, sid, sse) == (0, 0) and compare(log, sid, ws) == (0, 0)
    assert sse[0]["position"] == ws[0]["position"] and sse == ws
    assert sse[-1]["type"] == "session.patched"
    assert nginx.proc is not None and nginx.proc.poll() is None, nginx.error_log()


async def follow_sse(
    http: aiohttp.ClientSession, sid: str, headers: dict[str, str], into: list[dict[str, Any]]
) -> None:
    """The session channel as server-sent events, one ``data:`` line per event."""
    sse_headers = {**headers, "Accept": "text/event-stream"}
    async with http.get(f"/api/realtime/sessions/{sid}", headers=sse_headers) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        event = ""
        async for line in r.content:
            text = line.decode().rstrip("\n")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: ") and event != "heartbeat":
                into.append(json.loads(text[6:]))


async def follow_ws(base: str, sid: str, token: str, into: list[dict[str, Any]]) -> None:
    async for frame in stream_session(base, sid, token, backoff=FAST):
        into.append(frame)


# failover: the Python client ----------------------------------------------------------------------
async def test_python_client_resumes_through_nginx_when_its_node_dies(
    lb: tuple[Cluster, Nginx], request: pytest.FixtureRequest
) -> None:
    nodes, nginx = lb
    frames: list[tuple[float, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as http:
        sid = await new_session(http, nginx.base_url, nodes.token)

        async def follow() -> None:
            async for frame in stream_session(nginx.base_url, sid, nodes.token, backoff=FAST):
                frames.append((time.time(), frame))

        follower = asyncio.create_task(follow())
        holder = await wait_holder(http, nodes)
        runner = next(n for n in nodes.nodes if n is not holder)
        run_id = await start_turn(http, runner, nodes.token, sid)
        await until(lambda: sum(f["type"] == "message.delta" for _, f in frames) >= 3)
        assert not released(frames, run_id), "the run ended before the kill"
        holder.kill()
        killed = time.time()
        await until(lambda: released(frames, run_id), within=60)
        follower.cancel()
        log = await checks.read_log(nodes.schema)
        await holder.restart()
    resume = min(t for t, _ in frames if t > killed) - killed
    lost, duplicated = compare(log, sid, [f for _, f in frames])
    run_end = next(f for _, f in frames if f["type"] == "run.completed")
    line = (
        f"nginx failover, Python client: resumed {resume * 1000:.0f} ms after its node was "
        f"killed; frames lost {lost}, duplicated {duplicated} (of {len(frames)})"
    )
    report(request.config, line)
    print(line)
    assert (lost, duplicated) == (0, 0)
    assert run_end["runId"] == run_id  # the run, on another node, finished normally


def released(frames: list[tuple[float, dict[str, Any]]], run_id: str) -> bool:
    return any(f["type"] == "run.released" and f["data"]["run_id"] == run_id for _, f in frames)


async def until(condition: Callable[[], bool], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# failover: the browser module ---------------------------------------------------------------------
FOLLOW_SCRIPT = """
async ({ base, sessionId, apiToken }) => {
  const m = await import('/static/sessionstream.js');
  window.frames_ = [];
  window.states_ = [];
  m.subscribeSession({
    baseUrl: base, sessionId, apiToken, backoff: { baseMs: 10, capMs: 50 },
    onEvent: (frame) => window.frames_.push([Date.now(), frame]),
    onState: (state) => window.states_.push(state),
  });
}
"""


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists() and os.environ.get("CI") != "true", reason="no Chromium")
async def test_browser_module_resumes_through_nginx_when_its_node_dies(
    lb: tuple[Cluster, Nginx], request: pytest.FixtureRequest
) -> None:
    from playwright.async_api import async_playwright

    nodes, nginx = lb
    async with aiohttp.ClientSession() as http, async_playwright() as playwright:
        sid = await new_session(http, nginx.base_url, nodes.token)
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            response = await page.goto(f"{nginx.base_url}/healthz")
            assert response is not None and response.ok
            args = {"base": nginx.base_url, "sessionId": sid, "apiToken": nodes.token}
            await page.evaluate(FOLLOW_SCRIPT, args)
            holder = await wait_holder(http, nodes)
            runner = next(n for n in nodes.nodes if n is not holder)
            run_id = await start_turn(http, runner, nodes.token, sid)

            async def got() -> list[tuple[float, dict[str, Any]]]:
                raw = await page.evaluate("window.frames_")
                return [(t / 1000, f) for t, f in raw]

            for _ in range(1500):
                frames = await got()
                if sum(f["type"] == "message.delta" for _, f in frames) >= 3:
                    break
                await asyncio.sleep(0.02)
            assert not released(frames, run_id), "the run ended before the kill"
            holder.kill()
            killed = time.time()
            for _ in range(3000):
                frames = await got()
                if released(frames, run_id):
                    break
                await asyncio.sleep(0.02)
            states = await page.evaluate("window.states_")
            assert not errors, errors
        finally:
            await browser.close()
        log = await checks.read_log(nodes.schema)
        await holder.restart()
    assert released(frames, run_id), "the browser never saw the run end"
    assert "reconnecting" in states and states[-1] == "live", states
    resume = min(t for t, _ in frames if t > killed) - killed
    lost, duplicated = compare(log, sid, [f for _, f in frames])
    line = (
        f"nginx failover, browser module: resumed {resume * 1000:.0f} ms after its node was "
        f"killed; frames lost {lost}, duplicated {duplicated} (of {len(frames)})"
    )
    report(request.config, line)
    print(line)
    assert (lost, duplicated) == (0, 0)
