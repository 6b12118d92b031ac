"""The real Trigger.dev SDK (pinned in tests/trigger_sdk/) against a live test server.

``tests/trigger_sdk/subscribe.mjs`` does what client code does:
``configure({baseURL, accessToken})`` then
``for await (const part of runs.subscribeToRun(runId).withStreams())``.
``tests/trigger_sdk/browser-app.mjs`` is a React page using
``useRealtimeRunWithStreams``, or ``useRealtimeRun`` with ``useRealtimeStream``
(auth as options or from ``TriggerAuthContext.Provider``), bundled with
esbuild and opened in headless Chromium from another origin, so CORS is
exercised for real; the browser tests also give it a refused token, a token
that expires mid-run (with and without ``refreshAccessToken``) and a network
drop mid-stream (``DroppingProxy``).
The packages are installed once per lockfile into
``~/.cache/sessionstream-trigger-sdk/<hash>`` (``npm ci``), so only the first
run pays for the download. Skipped when ``node`` (or, for the browser test,
Chromium) is missing, except on CI, where that is a failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sessionstream.engines.base import StreamItem, TurnInput
from sessionstream.server.keys import RUN_TOKENS, STORE
from sessionstream.server.trigger import TRIGGER
from tests.conftest import ON_CI, Api
from tests.scripted_engine import ScriptedEngine
from tests.test_runs import wait_idle

pytestmark = pytest.mark.node

HERE = Path(__file__).parent / "trigger_sdk"
S = "/api/campaigns/ai-chat-sessions"
TERMINAL = ("run.completed", "run.failed", "run.canceled")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if ON_CI:
            pytest.fail(f"{name} is required on CI for the Trigger.dev SDK test")
        pytest.skip(f"{name} is not installed")
    return path


@pytest.fixture(scope="session")
def sdk_dir() -> Path:
    """node_modules for the pinned SDK, keyed by the lockfile, installed atomically."""
    _tool("node")
    npm = _tool("npm")
    files = ("package.json", "package-lock.json")
    digest = hashlib.sha256(b"".join((HERE / f).read_bytes() for f in files)).hexdigest()[:16]
    cache = Path(
        os.environ.get("SESSIONSTREAM_TRIGGER_SDK_CACHE", "~/.cache/sessionstream-trigger-sdk")
    ).expanduser()
    target = cache / digest
    if not (target / "node_modules" / "@trigger.dev" / "sdk").is_dir():
        staging = cache / f"{digest}.tmp-{uuid.uuid4().hex[:8]}"
        staging.mkdir(parents=True)
        for name in files:
            shutil.copy(HERE / name, staging / name)
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=staging,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            pytest.fail(f"npm ci failed:\n{done.stdout}\n{done.stderr}")
        try:
            staging.rename(target)
        except OSError:  # another run installed it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    for script in ("subscribe.mjs", "browser-app.mjs"):
        shutil.copy(HERE / script, target / script)
    return target


@pytest.fixture(scope="session")
def browser_bundle(sdk_dir: Path) -> bytes:
    """The React page as one ES module, built from the pinned packages."""
    bundle = sdk_dir / "browser-app.js"
    done = subprocess.run(
        [
            str(sdk_dir / "node_modules" / ".bin" / "esbuild"),
            "browser-app.mjs",
            "--bundle",
            "--format=esm",
            "--platform=browser",
            "--external:node:*",  # the SDK's S2 transport, never loaded in a browser
            "--define:process.env.NODE_ENV='production'",
            f"--outfile={bundle.name}",
            "--log-level=error",
        ],
        cwd=sdk_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return bundle.read_bytes()


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if ON_CI:
        pytest.fail("Chromium is required on CI for the Trigger.dev browser test")
    pytest.skip("Chromium is not installed")


class GatedEngine:
    """Holds a turn after ``run.started`` until the test opens the gate."""

    name = "gated"
    model: str | None = None

    def __init__(self, inner: Any, gate: asyncio.Event) -> None:
        self.inner = inner
        self.gate = gate

    async def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        await self.gate.wait()
        async for item in self.inner.turn(inp):
            yield item

    async def example(self, inp: Any) -> Any:
        return await self.inner.example(inp)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _realistic_engine() -> Any:
    try:
        from sessionstream.engines.offline import OfflineEngine
    except ImportError:  # until the offline engine lands
        return ScriptedEngine(words=40, pace_s=0.01)
    return OfflineEngine(pace_ms=10)


async def _turn(api: Api) -> tuple[str, str, str]:
    session = await api.session()
    r = await api.client.post(
        f"{S}/{session['id']}/turn", json={"message": "Write an intro email"}, headers=api.h()
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    return session["id"], body["runId"], body["publicAccessToken"]


async def _node(sdk: Path, config: dict[str, Any]) -> asyncio.subprocess.Process:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return await asyncio.create_subprocess_exec(
        _tool("node"),
        str(sdk / "subscribe.mjs"),
        json.dumps(config),
        cwd=sdk,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _result(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().strip().splitlines()
    assert lines, err.decode()
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def _until(check: Any, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def base_url(api: Api) -> str:
    return str(api.client.make_url("")).rstrip("/")


async def test_sdk_sees_the_run_complete_and_every_chunk(make_api: Any, sdk_dir: Path) -> None:
    gate = asyncio.Event()
    # keep-alives every 50 ms: each carries the node's heartbeat in its `: ping` comment,
    # which the SDK must take for nothing (no chunk, no error)
    api: Api = await make_api(engine=GatedEngine(_realistic_engine(), gate), trigger_ping_s=0.05)
    sid, run_id, token = await _turn(api)
    proc = await _node(sdk_dir, {"baseURL": base_url(api), "runId": run_id, "token": token})
    feeds = api.app[TRIGGER]
    # the SDK opens the stream only after it has seen a run row: release the turn then
    await _until(lambda: feeds.stats.streams_opened >= 1)
    await asyncio.sleep(0.3)  # a few heartbeats while the turn waits
    gate.set()
    row = await wait_idle(api, sid)
    result = await _result(proc)
    assert result["watch"] == "done" and result["errors"] == []

    statuses = [r["status"] for r in result["runs"]]
    assert statuses[0] == "EXECUTING" and statuses[-1] == "COMPLETED", statuses
    final = result["runs"][-1]
    assert final["isCompleted"] and final["isSuccess"] and final["finishedAt"]
    assert final["id"] == run_id and final["createdAt"]
    assert final["taskIdentifier"] == "framework-chat-turn"
    assert final["realtimeStreams"] == ["chat"]
    assert final["metadata"]["sessionId"] == sid
    run_doc = await api.app[STORE].get_doc("run", run_id)
    assert run_doc is not None and final["output"] == run_doc.body["output"]

    events = await api.app[STORE].read_stream(f"run-{run_id}")
    chunks = [c["chunk"] for c in result["chunks"]]
    assert {c["key"] for c in result["chunks"]} == {"chat"}
    assert [c["seq"] for c in chunks] == [e.version for e in events]  # in order, exactly once
    assert [c["type"] for c in chunks] == [e.type for e in events]
    assert chunks[-1]["type"] in TERMINAL
    text = "".join(c["data"]["text"] for c in chunks if c["type"] == "message.delta")
    assert text and text == row["messages"][-1]["content"]


async def test_a_foreign_token_gets_nothing(make_api: Any, sdk_dir: Path) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=5))
    sid, run_id, token = await _turn(api)
    _, other_run, other_token = await _turn(api)
    await wait_idle(api, sid)
    config = {
        "baseURL": base_url(api),
        "runId": run_id,
        "token": token,
        "foreignToken": other_token,
        "badToken": "x.y.z",
    }
    result = await _result(await _node(sdk_dir, config))
    assert result["watch"] == "done"
    refused = result["refused"]
    direct = refused["direct"]
    assert direct["foreign runs"]["status"] == direct["foreign streams"]["status"] == 403
    assert direct["bad runs"]["status"] == direct["bad streams"]["status"] == 401
    assert direct["foreign runs"]["body"]["error"]["code"] == "forbidden"
    assert refused["sdkParts"] == 0  # the SDK got nothing, and (as documented) says nothing
    counts = api.app[TRIGGER].stats.refused
    assert counts.get(403, 0) >= 3 and counts.get(401, 0) == 2  # 2 direct + the SDK's own try
    assert other_run != run_id


async def test_dropped_stream_resumes_without_loss_or_duplicates(
    make_api: Any, sdk_dir: Path
) -> None:
    gate = asyncio.Event()
    # a pace above the coalescing window: one delta per word, and the gate holds mid-reply
    api: Api = await make_api(engine=ScriptedEngine(words=20, pace_s=0.02, gate=gate))
    sid, run_id, token = await _turn(api)
    config = {
        "baseURL": base_url(api),
        "runId": run_id,
        "token": token,
        "abortAfter": 5,
        "resumeTimeoutSeconds": 1,
    }
    proc = await _node(sdk_dir, config)
    feeds = api.app[TRIGGER]
    # the resumed read is held while the engine waits; Timeout-Seconds: 1 makes the server
    # drop it, and the SDK reconnects on its own with Last-Event-ID
    await _until(lambda: feeds.stats.streams_dropped >= 1)
    gate.set()
    row = await wait_idle(api, sid)
    result = await _result(proc)
    assert result["errors"] == []
    first = [c["chunk"]["seq"] for c in result["chunks"]]
    resumed = [c["seq"] for c in result["resumed"]]
    assert first == [1, 2, 3, 4, 5]
    events = await api.app[STORE].read_stream(f"run-{run_id}")
    assert first + resumed == [e.version for e in events]  # every chunk, exactly once
    assert result["resumed"][-1]["type"] == "run.completed"
    chunks = [c["chunk"] for c in result["chunks"]] + result["resumed"]
    text = "".join(c["data"]["text"] for c in chunks if c["type"] == "message.delta")
    assert text == row["messages"][-1]["content"] == "".join(f"w{i} " for i in range(20))
    assert feeds.stats.streams_resumed >= 2  # streams.read(startIndex) + the SDK's reconnect


class DroppingProxy:
    """A TCP proxy in front of the server whose connections the test can cut at once:
    a network drop as the browser sees it (the request dies mid-body, no clean end)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.transports: set[asyncio.WriteTransport] = set()
        self.server: asyncio.Server | None = None
        self.drops = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._pipe_both, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _pipe_both(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        ends = (writer.transport, up_writer.transport)
        self.transports.update(ends)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                sink.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self.transports.difference_update(ends)

    def drop(self) -> None:
        self.drops += 1
        for transport in list(self.transports):
            transport.abort()

    async def close(self) -> None:
        self.drop()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@asynccontextmanager
async def browser_page(
    aiohttp_server: Any,
    bundle: bytes,
    config: dict[str, Any],
    routes: tuple[tuple[str, Any], ...] = (),
) -> AsyncIterator[Any]:
    """The React page served from another origin (same host, another port), opened in Chromium."""
    chromium = _chromium()
    from playwright.async_api import async_playwright

    html = (
        "<!doctype html><meta charset=utf-8><div id=root></div>"
        f"<script>window.TRIGGER_CONFIG = {json.dumps(config)};</script>"
        "<script type=module src=/app.js></script>"
    )

    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    async def app_js(_request: web.Request) -> web.Response:
        return web.Response(body=bundle, content_type="text/javascript")

    site = web.Application()
    site.router.add_get("/", index)
    site.router.add_get("/app.js", app_js)
    for path, handler in routes:
        site.router.add_get(path, handler)
    page_server = await aiohttp_server(site)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(str(page_server.make_url("/")))
            yield page
        finally:
            await browser.close()


async def page_result(page: Any, until: str = "window.RESULT.done") -> dict[str, Any]:
    try:
        await page.wait_for_function(until, timeout=45_000)
    except Exception as exc:
        seen = await page.evaluate("window.RESULT")
        seen["stream"]["chunks"] = [c["seq"] for c in seen["stream"]["chunks"]]
        raise AssertionError(f"page never reached {until}: {json.dumps(seen)[:3000]}") from exc
    result: dict[str, Any] = await page.evaluate("window.RESULT")
    return result


async def run_seqs(api: Api, run_id: str) -> list[int]:
    return [e.version for e in await api.app[STORE].read_stream(f"run-{run_id}")]


def chunk_seqs(result: dict[str, Any]) -> list[int]:
    return [int(c["seq"]) for c in result["stream"]["chunks"]]


def shown_text(result: dict[str, Any]) -> str:
    return "".join(
        c["data"]["text"] for c in result["stream"]["chunks"] if c["type"] == "message.delta"
    )


@pytest.mark.browser
async def test_react_hook_in_a_browser_from_another_origin(
    make_api: Any, browser_bundle: bytes, aiohttp_server: Any
) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=GatedEngine(_realistic_engine(), gate))
    sid, run_id, token = await _turn(api)
    config = {"baseURL": base_url(api), "runId": run_id, "token": token, "mode": "withStreams"}
    feeds = api.app[TRIGGER]
    async with browser_page(aiohttp_server, browser_bundle, config) as page:
        await _until(lambda: feeds.stats.streams_opened >= 1)
        gate.set()
        result = await page_result(page)
        shown = await page.inner_text("#text")
    row = await wait_idle(api, sid)
    assert result["run"]["error"] is None and result["stream"]["error"] is None
    statuses = result["run"]["statuses"]
    assert statuses[0] == "EXECUTING" and statuses[-1] == "COMPLETED"
    assert chunk_seqs(result) == await run_seqs(api, run_id)
    assert shown == row["messages"][-1]["content"]
    run_doc = await api.app[STORE].get_doc("run", run_id)
    assert run_doc is not None and result["run"]["output"] == run_doc.body["output"]


@pytest.mark.browser
@pytest.mark.parametrize("mode", ["hooks", "provider"])
async def test_use_realtime_run_and_use_realtime_stream(
    make_api: Any, browser_bundle: bytes, aiohttp_server: Any, mode: str
) -> None:
    """``useRealtimeRun`` and ``useRealtimeStream``, given auth as options or by
    ``TriggerAuthContext.Provider`` (the SDK's provider: there is no ``TriggerAuthProvider``)."""
    gate = asyncio.Event()
    api: Api = await make_api(engine=GatedEngine(_realistic_engine(), gate))
    sid, run_id, token = await _turn(api)
    config = {"baseURL": base_url(api), "runId": run_id, "token": token, "mode": mode}
    feeds = api.app[TRIGGER]
    async with browser_page(aiohttp_server, browser_bundle, config) as page:
        await _until(lambda: feeds.stats.streams_opened >= 1)
        gate.set()
        result = await page_result(page)
        shown = await page.inner_text("#text")
        status = await page.inner_text("#status")
    row = await wait_idle(api, sid)
    assert result["run"]["errors"] == [] and result["stream"]["errors"] == []
    assert result["run"]["statuses"][-1] == status == "COMPLETED"
    run_doc = await api.app[STORE].get_doc("run", run_id)
    assert run_doc is not None and result["run"]["output"] == run_doc.body["output"]
    assert chunk_seqs(result) == await run_seqs(api, run_id)
    assert shown == shown_text(result) == row["messages"][-1]["content"]


@pytest.mark.browser
async def test_a_refused_token_sets_the_hooks_error(
    make_api: Any, browser_bundle: bytes, aiohttp_server: Any
) -> None:
    """In a browser the hooks do report a refusal (Node's iterator only stops)."""
    api: Api = await make_api(engine=ScriptedEngine(words=5))
    sid, run_id, _token = await _turn(api)
    await wait_idle(api, sid)
    _, _other_run, other_token = await _turn(api)
    config = {"baseURL": base_url(api), "runId": run_id, "token": other_token, "mode": "hooks"}
    async with browser_page(aiohttp_server, browser_bundle, config) as page:
        result = await page_result(page, "window.RESULT.run.error && window.RESULT.stream.error")
    assert result["run"]["error"]["status"] == 403, result["run"]
    assert result["stream"]["error"]["status"] == 403, result["stream"]
    assert result["stream"]["chunks"] == [] and result["run"]["statuses"] == []
    assert api.app[TRIGGER].stats.refused.get(403, 0) >= 2


def token_route(api: Api, run_id: str, ttl_s: int) -> Any:
    """The page's backend: a publicAccessToken for the run, minted when asked."""

    async def mint(_request: web.Request) -> web.Response:
        token = api.app[RUN_TOKENS].mint(run_id, api.user_a, token_ref=api.ref(), ttl_s=ttl_s)
        return web.json_response({"token": token}, headers={"Cache-Control": "no-store"})

    return mint


@pytest.mark.browser
async def test_a_token_that_expires_mid_run_ends_with_the_hooks_error(
    make_api: Any, browser_bundle: bytes, aiohttp_server: Any
) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=GatedEngine(ScriptedEngine(words=60, pace_s=0.1), gate))
    sid, run_id, _ = await _turn(api)
    config = {"baseURL": base_url(api), "runId": run_id, "tokenUrl": "/first", "mode": "hooks"}
    feeds = api.app[TRIGGER]
    first = token_route(api, run_id, ttl_s=3)
    async with browser_page(
        aiohttp_server, browser_bundle, config, routes=(("/first", first),)
    ) as page:
        await _until(lambda: feeds.stats.streams_opened >= 1 and feeds.stats.snapshots >= 1)
        gate.set()
        result = await page_result(
            page,
            "window.RESULT.stream.error && (window.RESULT.run.error || window.RESULT.run.finished)",
        )
    await wait_idle(api, sid)
    assert result["stream"]["error"]["status"] == 401, result["stream"]["error"]
    # the run feed's long-poll, authorised before the expiry, may still bring the run's end;
    # its next request is refused the same way
    run = result["run"]
    assert run["finished"] or run["error"]["status"] == 401, run
    seqs = chunk_seqs(result)
    every = await run_seqs(api, run_id)
    assert seqs == every[: len(seqs)] and 2 <= len(seqs) < len(every), "a prefix, each chunk once"
    assert not result["stream"]["ended"] and feeds.stats.refused.get(401, 0) >= 1


@pytest.mark.browser
async def test_a_token_refreshed_mid_run_keeps_every_chunk_once(
    make_api: Any, browser_bundle: bytes, aiohttp_server: Any
) -> None:
    """``refreshAccessToken`` (here on the provider) asks the page's backend for a new token."""
    gate = asyncio.Event()
    api: Api = await make_api(engine=GatedEngine(ScriptedEngine(words=60, pace_s=0.1), gate))
    sid, run_id, _ = await _turn(api)
    config = {
        "baseURL": base_url(api),
        "runId": run_id,
        "tokenUrl": "/first",
        "mode": "provider",
        "refreshUrl": "/token",
    }
    feeds = api.app[TRIGGER]
    routes = (("/first", token_route(api, run_id, 3)), ("/token", token_route(api, run_id, 60)))
    async with browser_page(aiohttp_server, browser_bundle, config, routes=routes) as page:
        await _until(lambda: feeds.stats.streams_opened >= 1 and feeds.stats.snapshots >= 1)
        gate.set()
        result = await page_result(page)
    row = await wait_idle(api, sid)
    assert result["refreshes"] >= 1 and feeds.stats.refused.get(401, 0) >= 1
    assert result["stream"]["errors"] == [] and result["run"]["errors"] == []
    assert chunk_seqs(result) == await run_seqs(api, run_id), "every chunk, exactly once"
    assert shown_text(result) == row["messages"][-1]["content"]


@pytest.mark.browser
@pytest.mark.parametrize("mode", ["withStreams", "hooks"])
async def test_a_network_drop_mid_stream_keeps_every_chunk_once(
    make_api: Any, browser_bundle: bytes, aiohttp_server: Any, mode: str
) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=GatedEngine(ScriptedEngine(words=40, pace_s=0.05), gate))
    sid, run_id, token = await _turn(api)
    proxy = DroppingProxy(int(base_url(api).rsplit(":", 1)[1]))
    config = {"baseURL": await proxy.start(), "runId": run_id, "token": token, "mode": mode}
    feeds = api.app[TRIGGER]
    try:
        async with browser_page(aiohttp_server, browser_bundle, config) as page:
            await _until(lambda: feeds.stats.streams_opened >= 1)
            gate.set()
            await _until(lambda: feeds.stats.frames_sent >= 10)
            before = len(chunk_seqs(await page.evaluate("window.RESULT")))
            proxy.drop()  # every connection through the proxy dies mid-body
            result = await page_result(page)
    finally:
        await proxy.close()
    row = await wait_idle(api, sid)
    every = await run_seqs(api, run_id)
    assert before < len(every), "dropped before the end"
    assert chunk_seqs(result) == every, "every chunk, exactly once, in order"
    assert shown_text(result) == row["messages"][-1]["content"]
    assert feeds.stats.streams_resumed >= 1, "the SDK came back with Last-Event-ID"
    assert result["stream"]["errors"] == [] or result["stream"]["error"] is None
