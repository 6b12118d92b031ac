"""Failures the console must keep on screen until their cause is gone.

A run that fails (here: the provider refuses the API key, the likeliest first
failure with a real model) is a message in the chat with the reason the
run's ``run.failed`` event gives, and stays through the background refreshes
that follow and through a reload. A 409 "session busy" stays until the
session is idle again; a network error goes away by itself once the server
answers again. Expected texts come from the server's API, never constants.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.browser.conftest import Server
from tests.browser.console_page import (
    S,
    doc_shot,
    events,
    open_session,
    stored,
    tid,
    wait_idle,
)

pytestmark = pytest.mark.browser


def run_of(server: Server, run_id: str) -> dict[str, Any]:
    return dict(server.api("GET", f"/api/runs/{run_id}")["run"])


def test_a_failed_run_stays_in_the_chat_with_its_reason(
    page_factory: Any, failing_server: Server
) -> None:
    server = failing_server
    session = server.session_with_node("Wrong key")
    page = page_factory()
    open_session(page, server, session)
    page.fill(tid("turn-input"), "Write an intro email for heads of finance")
    with page.expect_response(lambda r: r.url.endswith("/turn")) as answer:
        page.click(tid("turn-send"))
    run_id = answer.value.json()["runId"]
    note = f'{tid("run-failure")}[data-run-id="{run_id}"]'
    page.wait_for_selector(note)
    wait_idle(server, session["id"])
    run = run_of(server, run_id)
    assert run["status"] == "failed" and run["error"]
    assert page.text_content(f"{note} {tid('run-failure-reason')}") == run["error"]

    # the refreshes that follow the run's end (and a second of quiet) leave it where it is
    page.wait_for_selector(f'{tid("task-status")}[data-status="idle"]')
    time.sleep(1.0)
    assert page.is_visible(note)
    # it sits right after the message that asked for it
    row = stored(server, session["id"])
    assert [m["role"] for m in row["messages"]] == ["user"]
    order = page.eval_on_selector_all(
        f"{tid('messages')} > *", "nodes => nodes.map(n => n.dataset.testid)"
    )
    assert order == ["message", "run-failure"], order
    doc_shot(page, "console-failed-run")

    # a reload rebuilds it from the run's events
    page.reload()
    page.wait_for_selector(f'{tid("conn-state")}[data-state="live"]')
    page.wait_for_selector(note)
    assert page.text_content(f"{note} {tid('run-failure-reason')}") == run["error"]

    # and the runs list says the same
    page.click(tid("tab-runs"))
    card = f'{tid("run-row")}[data-run-id="{run_id}"]'
    page.wait_for_selector(card)
    assert page.get_attribute(card, "data-status") == "failed"
    assert page.text_content(f"{card} {tid('run-error')}") == run["error"]
    assert page.is_hidden(tid("error-banner")), "a failed run is a chat message, not a banner"


def test_a_failure_in_another_tab_shows_in_this_one(
    page_factory: Any, failing_server: Server
) -> None:
    server = failing_server
    session = server.session_with_node("Other tab")
    page = page_factory()
    open_session(page, server, session)
    run_id = server.api("POST", f"{S}/{session['id']}/turn", {"message": "hello"})["runId"]
    note = f'{tid("run-failure")}[data-run-id="{run_id}"]'
    page.wait_for_selector(note)
    wait_idle(server, session["id"])
    assert (
        page.text_content(f"{note} {tid('run-failure-reason')}") == run_of(server, run_id)["error"]
    )


def test_session_busy_stays_until_the_session_is_idle(page_factory: Any, server: Server) -> None:
    session = server.session_with_node("Busy")
    sid = session["id"]
    page = page_factory()
    open_session(page, server, session)
    # another client starts a reply; this tab's Send is disabled, but Ctrl+Enter still asks
    other = server.api("POST", f"{S}/{sid}/turn", {"message": "Write a follow-up for CFOs"})
    page.wait_for_selector(f'{tid("task-status")}[data-status="chat_processing"]')
    page.fill(tid("turn-input"), "me too")
    with page.expect_response(lambda r: r.url.endswith("/turn")) as answer:
        page.press(tid("turn-input"), "Control+Enter")
    assert answer.value.status == 409
    code = answer.value.json()["error"]["code"]
    item = f'{tid("error-item")}[data-key="busy"]'
    page.wait_for_selector(item)
    assert code in page.text_content(item)
    # frames keep coming and the row is refetched many times: the error stays while busy
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and stored(server, sid)["task_status"] is not None:
        assert page.is_visible(item)
        time.sleep(0.1)
    assert run_of(server, other["runId"])["status"] in ("running", "completed")
    # once the other reply is done, a fresh read shows the session idle: the error goes
    wait_idle(server, sid)
    page.wait_for_selector(item, state="detached")
    assert page.evaluate("window.__sessionstream.errorKeys()") == []


def test_a_network_error_clears_when_the_server_answers_again(
    page_factory: Any, server: Server
) -> None:
    session = server.session_with_node("Network")
    page = page_factory()
    open_session(page, server, session)
    page.click(tid("tab-audit"))
    page.route("**/api/**", lambda route: route.abort("internetdisconnected"))
    page.route("**/healthz", lambda route: route.abort("internetdisconnected"))
    page.click(tid("audit-refresh"))
    item = f'{tid("error-item")}[data-key="network"]'
    page.wait_for_selector(item)
    assert "network_error" in page.text_content(item)
    time.sleep(2.5)  # probes keep failing: the error is still true, so it stays
    assert page.is_visible(item)
    page.unroute("**/api/**")
    page.unroute("**/healthz")
    # no click: the console's own probe finds the server and the stale error goes
    page.wait_for_selector(item, state="detached", timeout=12_000)
    assert page.is_hidden(tid("error-banner"))


def test_one_success_does_not_hide_another_failure(page_factory: Any, server: Server) -> None:
    """The old banner was cleared by any success; now only the failing action's own success."""
    session = server.session_with_node("Two errors")
    page = page_factory()
    open_session(page, server, session)
    page.click("summary >> text=Options")
    page.fill(tid("turn-vars"), "x" * 150)
    page.fill(tid("turn-input"), "hello")
    with page.expect_response(lambda r: r.url.endswith("/turn")) as answer:
        page.click(tid("turn-send"))
    assert answer.value.status == 400
    item = f'{tid("error-item")}[data-key="turn"]'
    page.wait_for_selector(item)
    # an unrelated success (a rename) leaves the turn's error up
    page.click(tid("session-rename"))
    page.fill(tid("rename-input"), "Renamed")
    with page.expect_response(lambda r: r.request.method == "PATCH"):
        page.press(tid("rename-input"), "Enter")
    page.wait_for_selector(f"{tid('session-title')} >> text=Renamed")
    assert page.is_visible(item)
    # the turn succeeding clears it
    page.fill(tid("turn-vars"), "first_name, company")
    with page.expect_response(lambda r: r.url.endswith("/turn")) as answer:
        page.click(tid("turn-send"))
    assert answer.value.status == 200
    page.wait_for_selector(item, state="detached")
    wait_idle(server, session["id"])
    assert [e["type"] for e in events(server, session["id"])].count("run.claimed") == 1
