"""``/static/sessionstream.js`` imported by a page of another origin streams a run.

The page is served from another port (another origin), imports the module
from the sessionstream server by absolute URL, and follows a run with
``streamRun``: Chromium fetches a cross-origin module script in CORS mode
and refuses to run it without ``Access-Control-Allow-Origin``.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.browser.conftest import Server
from tests.browser.console_page import S, stored, wait_idle

pytestmark = pytest.mark.browser

PAGE = """<!doctype html><meta charset=utf-8><pre id=out></pre>
<script type=module>
  const cfg = JSON.parse(document.getElementById('cfg').textContent);
  window.RESULT = {frames: [], text: '', error: null, done: false};
  try {
    const { streamRun } = await import(cfg.module);
    const run = { baseUrl: cfg.baseUrl, runId: cfg.runId, token: cfg.token };
    for await (const frame of streamRun(run)) {
      window.RESULT.frames.push({ seq: frame.seq, type: frame.type });
      if (frame.type === 'message.delta') {
        window.RESULT.text += frame.data.text;
        document.getElementById('out').textContent = window.RESULT.text;
      }
    }
  } catch (error) {
    window.RESULT.error = String(error);
  }
  window.RESULT.done = true;
</script>
"""


@pytest.fixture
def other_origin() -> Iterator[tuple[str, dict[str, str]]]:
    """A page server on another port; set ``config`` before opening the page."""
    config: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            cfg = json.dumps(config).replace("</", "<\\/")
            body = f"<script type=application/json id=cfg>{cfg}</script>{PAGE}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", config
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_module_has_cors_headers(server: Server) -> None:
    request = urllib.request.Request(
        server.url + "/static/sessionstream.js", headers={"Origin": "http://app.example"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Content-Type"].startswith(
            ("text/javascript", "application/javascript")
        )
    with urllib.request.urlopen(server.url + "/static/console.js", timeout=10) as response:
        assert response.headers.get("Access-Control-Allow-Origin") is None, (
            "the console's own stay same-origin"
        )


def test_a_page_of_another_origin_imports_it_and_streams_a_run(
    page_factory: Any, server: Server, other_origin: tuple[str, dict[str, str]]
) -> None:
    url, config = other_origin
    session = server.session_with_node("Cross-origin")
    started = server.api("POST", f"{S}/{session['id']}/turn", {"message": "Write an intro email"})
    config.update(
        module=server.url + "/static/sessionstream.js",
        baseUrl=server.url,
        runId=started["runId"],
        token=started["publicAccessToken"],
    )
    assert url.split(":")[2] != server.url.split(":")[2], "another port: another origin"
    page = page_factory()
    page.goto(url)
    page.wait_for_function("() => window.RESULT && window.RESULT.done", timeout=60_000)
    result = page.evaluate("window.RESULT")
    assert result["error"] is None
    row = wait_idle(server, session["id"])
    assert result["text"] == row["messages"][-1]["content"] == page.text_content("#out")
    seqs = [f["seq"] for f in result["frames"]]
    assert seqs == list(range(1, len(seqs) + 1)), "every frame once, in order"
    assert result["frames"][-1]["type"] == "run.completed"
    assert stored(server, session["id"])["task_status"] is None
