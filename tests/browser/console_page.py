"""Driving the console page: selectors, waits, and the checks every view shares."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from tests.browser.conftest import OUTPUT, REPO, Server, shot

S = "/api/campaigns/ai-chat-sessions"
DOC_IMAGES = REPO / "docs" / "img"
#: set to 1 to refresh the screenshots the docs show (docs/img/*.png)
UPDATE_DOCS = os.environ.get("SESSIONSTREAM_UPDATE_DOCS_SCREENSHOTS") == "1"


def tid(name: str) -> str:
    return f'[data-testid="{name}"]'


def connect(page: Any, server: Server, token: str | None = None, fragment: str = "") -> None:
    page.goto(server.url + "/" + fragment)
    page.fill(tid("token-input"), token or server.token)
    page.click(tid("token-save"))


def open_session(page: Any, server: Server, session: dict[str, Any]) -> None:
    """Connect straight to one session (the URL fragment a reload keeps) and wait for it."""
    ids = session["campaign_id"], session["node_id"], session["id"]
    connect(page, server, fragment="#campaign={}&node={}&session={}".format(*ids))
    page.wait_for_selector(f'{tid("conn-state")}[data-state="live"]')
    wait_log(page)


def wait_log(page: Any) -> None:
    """Until the session's event log has loaded (what the runs, notes and audit fold)."""
    page.wait_for_function(
        "() => { const l = window.__sessionstream.log(); return l && l.loaded; }"
    )


def send_turn(page: Any, text: str) -> str:
    """Type a message, press Send; returns the run id the server answered with."""
    page.fill(tid("turn-input"), text)
    with page.expect_response(
        lambda r: r.url.endswith("/turn") and r.request.method == "POST"
    ) as answer:
        page.click(tid("turn-send"))
    assert answer.value.status == 200, answer.value.text()
    return str(answer.value.json()["runId"])


def wait_words(page: Any, at_least: int) -> str:
    """Wait until the streaming bubble shows some words; returns its text then."""
    page.wait_for_function(
        """n => {
            const t = document.querySelector(
                '[data-testid="streaming-message"] [data-testid="message-text"]');
            return t && t.textContent.trim().split(/\\s+/).length >= n;
        }""",
        arg=at_least,
    )
    return str(page.text_content(f"{tid('streaming-message')} {tid('message-text')}"))


def wait_turn_done(page: Any, messages: int) -> None:
    page.wait_for_function(
        """n => document.querySelectorAll('[data-testid="message"]').length === n
            && !document.querySelector('[data-testid="streaming-message"]')
            && document.querySelector('[data-testid="task-status"]').dataset.status === 'idle'""",
        arg=messages,
    )


def stored(server: Server, sid: str) -> dict[str, Any]:
    return dict(server.api("GET", f"{S}/{sid}")["session"])


def wait_idle(server: Server, sid: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = stored(server, sid)
        if row["task_status"] is None:
            return row
        time.sleep(0.05)
    raise AssertionError(f"session {sid} still busy after {timeout}s")


def turn(server: Server, sid: str, message: str, **extra: Any) -> str:
    """A turn through the API, waited for; returns its run id."""
    run_id = str(server.api("POST", f"{S}/{sid}/turn", {"message": message, **extra})["runId"])
    wait_idle(server, sid)
    return run_id


def events(server: Server, sid: str) -> list[dict[str, Any]]:
    """Every event of the session (and its runs), oldest first, as the API pages them."""
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = server.api("GET", f"{S}/{sid}/events?after={after}&limit=1000")
        out.extend(page["events"])
        if page["next"] is None:
            return out
        after = page["next"]


#: elements wider than the viewport, unless inside a scroll container that itself fits
OVERFLOW = """() => {
    const width = document.documentElement.clientWidth;
    const out = [];
    for (const node of document.querySelectorAll('body *')) {
        const box = node.getBoundingClientRect();
        if (!box.width || box.right <= width + 0.5) continue;
        let clipped = false;
        for (let up = node.parentElement; up && up !== document.body; up = up.parentElement) {
            const style = getComputedStyle(up);
            if (['auto', 'scroll', 'hidden', 'clip'].includes(style.overflowX)) {
                clipped = up.getBoundingClientRect().right <= width + 0.5;
                break;
            }
        }
        const name = `${node.tagName.toLowerCase()}.${node.className}`;
        if (!clipped) out.push(`${name} ${Math.round(box.right)}`);
    }
    return {scroll: document.documentElement.scrollWidth - width, offenders: out.slice(0, 10)};
}"""


def assert_no_horizontal_overflow(page: Any, where: str) -> None:
    found = page.evaluate(OVERFLOW)
    assert found["scroll"] <= 0 and not found["offenders"], f"{where}: {found}"


def doc_shot(page: Any, name: str, *, element: str | None = None) -> Path:
    """A screenshot (of the viewport, or of one element) for test-output/, copied to
    docs/img/ when the docs are being refreshed."""
    if element is None:
        path = shot(page, name, full_page=False)
    else:
        path = OUTPUT / f"{name}.png"
        # the sticky top bar would be drawn over an element scrolled under it
        page.evaluate("document.querySelector('.topbar').style.position = 'static'")
        page.locator(element).screenshot(path=str(path))
        page.evaluate("document.querySelector('.topbar').style.position = ''")
    if UPDATE_DOCS:
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_IMAGES / f"{name}.png")
    return path
