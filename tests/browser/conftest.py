"""Browser fixtures: one real server process and one headless Chromium per module.

The server is ``python -m sessionstream serve`` on a temporary SQLite file with
the offline engine paced (30 ms a word) so replies visibly stream;
``failing_server`` is the same with the OpenAI-compatible engine pointed at a
local provider that refuses every request the way a wrong API key is refused.
The browser is Debian's Chromium driven by Playwright (never ``playwright install``).
Screenshots and the server log go to ``test-output/console/`` (gitignored).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import ServerProcess, base_env, create_user

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output" / "console"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip only where there is no browser and we are not on CI (CI must run these)."""
    if CHROMIUM.exists() or os.environ.get("CI") == "true":
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is missing (apt-get install chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@dataclass
class Server:
    """The running server, its user's token and a tiny JSON client for assertions."""

    proc: ServerProcess
    token: str

    @property
    def url(self) -> str:
        return self.proc.base_url

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {token or self.token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from exc

    def session_with_node(self, name: str = "API-made") -> dict[str, Any]:
        campaign = self.api("POST", "/api/campaigns", {"name": name})["campaign"]
        node = self.api("POST", f"/api/campaigns/{campaign['id']}/nodes", {"name": "Intro"})
        session = self.api(
            "POST",
            "/api/campaigns/ai-chat-sessions",
            {"campaign_id": campaign["id"], "node_id": node["node"]["id"]},
        )
        return dict(session["session"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    db = tmp_path_factory.mktemp("console") / "console.db"
    store_args = ["--db", str(db)]
    env = base_env(SESSIONSTREAM_OFFLINE_PACE_MS="30", SESSIONSTREAM_RATE_LIMIT="0")
    token = create_user(store_args, "console-tester")
    log = OUTPUT / "server.log"
    log.write_bytes(b"")
    with ServerProcess(store_args, env=env, log_path=log) as proc:
        yield Server(proc, token)


class WrongKeyProvider(BaseHTTPRequestHandler):
    """An OpenAI-compatible provider that answers every request 401, as for a wrong key."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(
            {
                "error": {
                    "message": "Incorrect API key provided: sk-wrong. You can find your API key "
                    "at your provider's dashboard.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def failing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose model provider refuses every request: every run fails."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    provider = ThreadingHTTPServer(("127.0.0.1", 0), WrongKeyProvider)
    thread = threading.Thread(target=provider.serve_forever, daemon=True)
    thread.start()
    db = tmp_path_factory.mktemp("failing") / "failing.db"
    store_args = ["--db", str(db)]
    env = base_env(
        SESSIONSTREAM_ENGINE="openai",
        OPENAI_BASE_URL=f"http://127.0.0.1:{provider.server_address[1]}/v1",
        OPENAI_API_KEY="sk-wrong",
        SESSIONSTREAM_MODEL="gpt-test",
    )
    token = create_user(store_args, "failure-tester")
    try:
        with ServerProcess(store_args, env=env, log_path=OUTPUT / "failing-server.log") as proc:
            yield Server(proc, token)
    finally:
        provider.shutdown()
        provider.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page_factory(browser: Any, server: Server) -> Iterator[Any]:
    """New pages in fresh contexts; any uncaught page error fails the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def make(width: int = 1440, height: int = 900) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def shot(page: Any, name: str, *, full_page: bool = True) -> Path:
    path = OUTPUT / f"{name}.png"
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=full_page)
    return path
