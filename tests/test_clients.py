"""The resuming clients against a real server: ``sessionstream.client`` and the browser module.

Connections go through a TCP proxy the test can cut at any moment (an abrupt
network drop: no close frame), so the clients' reconnect, resume and dedup
are exercised for real; the browser module runs in headless Chromium.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sessionstream.client import (
    Backoff,
    ResyncRequired,
    StreamRefused,
    StreamUnavailable,
    channel_url,
    stream_run,
    stream_session,
)
from sessionstream.server.frames import chat_stream_event
from sessionstream.server.keys import RUN_TOKENS, STORE
from tests.conftest import Api
from tests.scripted_engine import ScriptedEngine
from tests.test_realtime import start_turn, wait_idle

FAST = Backoff(base_s=0.01, cap_s=0.05)
CHROMIUM = Path("/usr/bin/chromium")


class CuttableProxy:
    """A TCP relay to the test server whose connections can all be cut at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.cuts = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> CuttableProxy:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        self.cut()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        link = (writer, up_writer)
        self.links.add(link)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.links.discard(link)

    def cut(self) -> None:
        for client, upstream in list(self.links):
            client.transport.abort()
            upstream.transport.abort()
        self.cuts += bool(self.links)


@contextlib.asynccontextmanager
async def chaos(proxy: CuttableProxy, seed: int, every: tuple[float, float]) -> AsyncIterator[None]:
    """Cut every connection through the proxy at seeded random intervals."""
    rng = random.Random(seed)

    async def loop() -> None:
        while True:
            await asyncio.sleep(rng.uniform(*every))
            proxy.cut()

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def base_url(api: Api) -> str:
    return str(api.client.make_url("")).rstrip("/")


def test_channel_url() -> None:
    url = channel_url("https://h.example/prefix/", "/api/realtime/runs/r", {"after": 3})
    assert url == "wss://h.example/prefix/api/realtime/runs/r?after=3"
    assert channel_url("http://h:1", "/x", {}) == "ws://h:1/x"


# the Python client ------------------------------------------------------------------------------
async def test_stream_run_survives_drops_exactly_once(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=300, pace_s=0.002))
    turn = await start_turn(api)
    async with CuttableProxy(api.client.port or 0) as proxy:
        async with chaos(proxy, seed=7, every=(0.03, 0.08)):
            frames = [
                frame
                async for frame in stream_run(proxy.url, turn.run_id, turn.token, backoff=FAST)
            ]
    assert proxy.cuts >= 3
    stored = [chat_stream_event(e) for e in await api.app[STORE].read_stream(f"run-{turn.run_id}")]
    assert frames == stored  # every event once, in order, ending with the terminal one
    row = await wait_idle(api, turn.session_id)
    text = "".join(f["data"]["text"] for f in frames if f["type"] == "message.delta")
    assert text == row["messages"][-1]["content"]


async def test_stream_run_resumes_after_and_compact(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=20))
    turn = await start_turn(api)
    await wait_idle(api, turn.session_id)
    url = base_url(api)
    stored = [chat_stream_event(e) for e in await api.app[STORE].read_stream(f"run-{turn.run_id}")]
    tail = [f async for f in stream_run(url, turn.run_id, api.token_a, after=4)]
    assert tail == stored[4:]
    compact = [f async for f in stream_run(url, turn.run_id, turn.token, compact=True)]
    assert [f["type"] for f in compact] == ["message.snapshot", "run.completed"]
    # the cursor already at the terminal event: ends at once, without retrying
    assert [f async for f in stream_run(url, turn.run_id, turn.token, after=len(stored))] == []


async def test_refusals_raise_clear_errors(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=3))
    a = await start_turn(api)
    b = await start_turn(api, token=api.token_b)
    await wait_idle(api, a.session_id)
    url = base_url(api)
    expired = api.app[RUN_TOKENS].mint(a.run_id, api.user_a, token_ref=api.ref(), ttl_s=-10)
    cases = [
        (a.run_id, "not-a-token", 401),
        (a.run_id, expired, 401),
        (a.run_id, b.token, 403),
        (a.run_id, api.token_b, 404),
        (b.run_id, a.token, 403),
    ]
    for run_id, token, status in cases:
        with pytest.raises(StreamRefused) as refused:
            async for _ in stream_run(url, run_id, token, backoff=FAST):
                pass
        assert refused.value.status == status and refused.value.close_code == 4000 + status
        assert refused.value.reason
    with pytest.raises(StreamRefused) as refused:
        async for _ in stream_session(url, a.session_id, a.token):
            pass
    assert refused.value.status == 401
    with pytest.raises(StreamRefused) as refused:
        async for _ in stream_session(url, b.session_id, api.token_a):
            pass
    assert refused.value.status == 404
    with pytest.raises(ResyncRequired) as resync:
        async for _ in stream_run(url, a.run_id, a.token, after=500):
            pass
    assert resync.value.head == len(await api.app[STORE].read_stream(f"run-{a.run_id}"))


async def test_unreachable_server_gives_up_after_max_attempts() -> None:
    with pytest.raises(StreamUnavailable):
        async for _ in stream_run("http://127.0.0.1:9", "run_x", "t", max_attempts=2, backoff=FAST):
            pass


async def test_stream_session_follows_turns_through_drops(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=200, pace_s=0.002))
    sid = (await api.session())["id"]
    async with CuttableProxy(api.client.port or 0) as proxy:
        frames: list[dict[str, Any]] = []

        async def follow() -> None:
            released = 0
            async for frame in stream_session(proxy.url, sid, api.token_a, backoff=FAST):
                frames.append(frame)
                released += frame["type"] == "run.released"
                if released == 2:
                    return

        follower = asyncio.create_task(follow())
        async with chaos(proxy, seed=11, every=(0.03, 0.08)):
            await start_turn(api, sid)
            await wait_idle(api, sid)
            await start_turn(api, sid)
            await asyncio.wait_for(follower, 30)
    expected = await api.app[STORE].read_all(0, keys=frozenset({f"session-{sid}"}))
    assert frames == [chat_stream_event(e) for e in expected]
    assert proxy.cuts >= 2


# the browser module -------------------------------------------------------------------------------
FOLLOW_SCRIPT = """
async ({ base, runId, token }) => {
  const m = await import('/static/sessionstream.js');
  const frames = [];
  const states = [];
  await new Promise((resolve) => {
    m.subscribeRun({
      baseUrl: base, runId, token, backoff: { baseMs: 10, capMs: 50 },
      onEvent: (frame) => frames.push(frame),
      onState: (state) => { states.push(state); if (state === 'closed') resolve(); },
    });
  });
  return { frames, states };
}
"""
REFUSAL_SCRIPT = """
async ({ base, runId, token, badToken }) => {
  const m = await import('/static/sessionstream.js');
  const refused = await new Promise((resolve) => {
    const seen = [];
    m.subscribeRun({
      baseUrl: base, runId, token: badToken,
      onState: (state, detail) => {
        seen.push(state);
        if (state === 'error') resolve({ seen, detail });
      },
    });
  });
  const iterated = [];
  for await (const frame of m.streamRun({ baseUrl: base, runId, token, after: 3 })) {
    iterated.push(frame.seq);
  }
  let thrown = null;
  try {
    for await (const _ of m.streamRun({ baseUrl: base, runId, token, after: 100000 })) {}
  } catch (error) {
    thrown = { name: error.name, code: error.code, head: error.head };
  }
  return { refused, iterated, thrown };
}
"""


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists() and os.environ.get("CI") != "true", reason="no Chromium")
async def test_browser_module_resumes_through_drops(make_api: Any) -> None:
    from playwright.async_api import async_playwright

    api: Api = await make_api(engine=ScriptedEngine(words=300, pace_s=0.005))
    async with CuttableProxy(api.client.port or 0) as proxy, async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            response = await page.goto(f"{proxy.url}/healthz")
            assert response is not None and response.ok
            turn = await start_turn(api)  # now that the page is up: the run streams live
            args = {"base": proxy.url, "runId": turn.run_id, "token": turn.token}
            # the module is fetched before the cuts start (the realm's module map keeps it):
            # the cuts are for the stream, and a cut import is no resume to test
            await page.evaluate("() => import('/static/sessionstream.js').then(() => true)")
            async with chaos(proxy, seed=5, every=(0.05, 0.12)):
                result = await page.evaluate(FOLLOW_SCRIPT, args)
            result |= await page.evaluate(REFUSAL_SCRIPT, {**args, "badToken": "sst_" + "x" * 43})
            assert not errors
        finally:
            await browser.close()
    stored = [chat_stream_event(e) for e in await api.app[STORE].read_stream(f"run-{turn.run_id}")]
    assert result["frames"] == json.loads(json.dumps(stored))
    states = result["states"]
    assert states[0] == "connecting" and states[-1] == "closed" and "live" in states
    assert "reconnecting" in states and proxy.cuts >= 1
    assert result["refused"]["seen"] == ["connecting", "live", "error"]
    assert result["refused"]["detail"]["code"] == 4401
    assert result["iterated"] == [f["seq"] for f in stored[3:]]
    assert result["thrown"] == {"name": "StreamError", "code": 4409, "head": len(stored)}
