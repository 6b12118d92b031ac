"""The real Trigger.dev SDK (pinned in tests/trigger_sdk/) against a live test server.

``tests/trigger_sdk/subscribe.mjs`` does what client code does:
``configure({baseURL, accessToken})`` then
``for await (const part of runs.subscribeToRun(runId).withStreams())``.
``tests/trigger_sdk/browser-app.mjs`` is a React page using
``useRealtimeRunWithStreams``, bundled with esbuild and opened in headless
Chromium from another origin, so CORS is exercised for real.
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
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sessionstream.engines.base import StreamItem, TurnInput
from sessionstream.server.keys import STORE
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
    api: Api = await make_api(engine=GatedEngine(_realistic_engine(), gate))
    sid, run_id, token = await _turn(api)
    proc = await _node(sdk_dir, {"baseURL": base_url(api), "runId": run_id, "token": token})
    feeds = api.app[TRIGGER]
    # the SDK opens the stream only after it has seen a run row: release the turn then
    await _until(lambda: feeds.stats.streams_opened >= 1)
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


@pytest.mark.browser
async def test_react_hook_in_a_browser_from_another_origin(
    make_api: Any, browser_bundle: bytes, aiohttp_server: Any
) -> None:
    chromium = _chromium()
    from playwright.async_api import async_playwright

    gate = asyncio.Event()
    api: Api = await make_api(engine=GatedEngine(_realistic_engine(), gate))
    sid, run_id, token = await _turn(api)
    config = json.dumps({"baseURL": base_url(api), "runId": run_id, "token": token})
    html = (
        "<!doctype html><meta charset=utf-8><div id=root></div>"
        f"<script>window.TRIGGER_CONFIG = {config};</script>"
        "<script type=module src=/app.js></script>"
    )

    async def index(_request: web.Request) -> web.Response:
        return web.Response(text=html, content_type="text/html")

    async def app_js(_request: web.Request) -> web.Response:
        return web.Response(body=browser_bundle, content_type="text/javascript")

    site = web.Application()
    site.router.add_get("/", index)
    site.router.add_get("/app.js", app_js)
    page_server = await aiohttp_server(site)  # same host, another port: another origin
    feeds = api.app[TRIGGER]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(str(page_server.make_url("/")))
            await _until(lambda: feeds.stats.streams_opened >= 1)
            gate.set()
            await page.wait_for_function("window.RESULT.done", timeout=30_000)
            result = await page.evaluate("window.RESULT")
            shown = await page.inner_text("#text")
        finally:
            await browser.close()
    row = await wait_idle(api, sid)
    assert result["error"] is None
    assert result["statuses"][0] == "EXECUTING" and result["statuses"][-1] == "COMPLETED"
    events = await api.app[STORE].read_stream(f"run-{run_id}")
    assert [c["seq"] for c in result["chunks"]] == [e.version for e in events]
    assert shown == row["messages"][-1]["content"]
    run_doc = await api.app[STORE].get_doc("run", run_id)
    assert run_doc is not None and result["output"] == run_doc.body["output"]
