"""The web console at ``/`` driven in headless Chromium against a real server.

The main test is the documented flow done by clicking and typing: campaign,
node, session, turns (questions first, then a framework and a draft), a
websocket drop in the middle of a reply, examples for three leads, a skeleton
rollback and the audit log. Expectations come from the server's own API
(the stored messages, the stored skeleton history), never from constants.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import pytest

from tests.browser.conftest import OUTPUT, REPO, Server, shot
from tests.browser.console_page import (
    S,
    connect,
    send_turn,
    stored,
    tid,
    wait_turn_done,
    wait_words,
)

pytestmark = pytest.mark.browser

LEAD_FIELDS = ("id", "first_name", "last_name", "company", "position")


def test_documented_flow_by_clicking_and_typing(page_factory: Any, server: Server) -> None:
    page = page_factory()
    connect(page, server)
    page.wait_for_selector(tid("campaign-form"))
    assert page.is_visible(tid("empty-state"))
    shot(page, "01-connected")

    # campaign, node, session
    page.fill(tid("campaign-name"), "Q3 enterprise outreach")
    page.click(tid("campaign-create"))
    page.wait_for_selector(f'{tid("campaign-item")}[aria-current="true"] >> text=Q3 enterprise')
    page.fill(tid("node-name"), "Intro email")
    page.click(tid("node-create"))
    page.wait_for_selector(f'{tid("node-item")}[aria-current="true"] >> text=Intro email')
    page.click(tid("session-create"))
    page.wait_for_selector(tid("session-view"))
    page.wait_for_selector(f'{tid("conn-state")}[data-state="live"]')
    sid = page.evaluate("window.__sessionstream.sessionId()")
    assert page.get_attribute(tid("session-item") + '[aria-current="true"]', "data-id") == sid

    # turn 1: clarifying questions, streamed word by word
    brief = "Write an intro email for enterprise VPs of Sales, stressing time-to-ROI"
    run1 = send_turn(page, brief)
    partial = wait_words(page, 3)
    status = server.api("GET", f"/api/runs/{run1}")["run"]["status"]
    assert status in ("queued", "running"), "partial text must be visible before the run ends"
    shot(page, "02-streaming")
    wait_turn_done(page, 2)
    row = stored(server, sid)
    reply1 = row["messages"][-1]["content"]
    assert reply1.startswith(partial.strip()) and len(partial.strip()) < len(reply1)
    assert "?" in reply1 and row["skeleton"] is None
    assert page.is_visible(tid("skeleton-empty"))

    # turn 2: the brief; the skeleton and the draft appear, variables highlighted
    send_turn(
        page,
        "We are Acme Analytics. Proof: customers cut reporting time by 40%. "
        "CTA: a 15 minute call. Tone: friendly but professional.",
    )
    wait_turn_done(page, 4)
    page.wait_for_selector(tid("skeleton-body"))
    row = stored(server, sid)
    assert row["skeleton"] is not None and row["framework_version"] >= 1
    assert page.text_content(tid("draft-subject")) == row["draft_subject"]
    assert page.text_content(tid("draft-body")) == row["draft_body"]
    marks = page.locator(f"{tid('draft-panel')} {tid('template-var')}").all_text_contents()
    variables = re.findall(r"%[a-z_]+%", row["draft_subject"] + row["draft_body"])
    assert marks and set(marks) == set(variables)

    # turn 3, with the websocket dropped in the middle of the reply
    history_before = len(page.evaluate("window.__sessionstream.connectionHistory()"))
    run3 = send_turn(page, "Looks good, go ahead and draft it")
    wait_words(page, 3)
    at_drop = page.evaluate("id => window.__sessionstream.streamedText(id)", run3)
    assert page.evaluate("window.__sessionstream.dropConnection()") >= 1
    assert server.api("GET", f"/api/runs/{run3}")["run"]["status"] in ("queued", "running")
    wait_turn_done(page, 6)
    states = page.evaluate("window.__sessionstream.connectionHistory()")[history_before:]
    assert "reconnecting" in states or "connecting" in states, states
    page.wait_for_selector(f'{tid("conn-state")}[data-state="live"]')
    reply3 = stored(server, sid)["messages"][-1]["content"]
    streamed = page.evaluate("id => window.__sessionstream.streamedText(id)", run3)
    assert len(at_drop) < len(reply3), "the drop happened before the reply was complete"
    assert streamed.split() == reply3.split(), "words lost or repeated across the drop"
    assert streamed == reply3
    shown = page.locator(f"{tid('message')}[data-role='assistant'] {tid('message-text')}")
    assert shown.last.text_content() == reply3
    shot(page, "03-framework")
    if os.environ.get("SESSIONSTREAM_UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(OUTPUT / "03-framework.png", REPO / "docs" / "console.png")

    # turn 4 refines the framework: a second skeleton version
    send_turn(page, "Make it shorter and more formal")
    wait_turn_done(page, 8)
    row = stored(server, sid)
    assert row["framework_version"] >= 2 and row["skeleton_history"]
    page.wait_for_selector(f"{tid('framework-version')} >> text=v{row['framework_version']}")

    # examples for three leads typed into the table, with live progress
    page.click(tid("tab-examples"))
    leads = [
        ("lead-a", "Ava", "Stone", "Umbrella", "VP of Sales"),
        ("lead-b", "Ben", "Okafor", "Hooli", "Head of Revenue"),
        ("lead-c", "Chloe", "Ng", "Vandelay", "CRO"),
    ]
    rows = page.locator(tid("lead-row"))
    assert rows.count() == 3
    for index, values in enumerate(leads):
        for name, value in zip(LEAD_FIELDS, values, strict=True):
            rows.nth(index).locator(tid(f"lead-{name}")).fill(value)
    with page.expect_response(lambda r: r.url.endswith("/generate-examples")) as answer:
        page.click(tid("examples-generate"))
    examples_run = answer.value.json()["runId"]
    page.wait_for_selector(f'{tid("examples-progress")}[data-state="done"]')
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=\"example-row\"]').length === 3"
        " && document.querySelector('[data-testid=\"task-status\"]').dataset.status === 'idle'"
    )
    assert page.get_attribute(tid("examples-progress"), "data-done") == "3"
    progress = page.evaluate("id => window.__sessionstream.run(id).progress", examples_run)
    assert progress[0] == [0, 3] and progress[-1] == [3, 3], progress
    examples = stored(server, sid)["generated_examples"]
    assert [e["lead_id"] for e in examples] == ["lead-a", "lead-b", "lead-c"]
    for lead, example_row in zip(leads, page.locator(tid("example-row")).all(), strict=True):
        assert example_row.get_attribute("data-lead-id") == lead[0]
        assert lead[1] in example_row.text_content()
    shot(page, "04-examples")

    # roll the skeleton back to version 1 from the history timeline
    page.click(tid("tab-history"))
    before = stored(server, sid)
    v1 = next(h for h in before["skeleton_history"] if h["framework_version"] == 1)
    with page.expect_response(lambda r: r.url.endswith("/skeleton/rollback")) as answer:
        page.click(f'{tid("skeleton-rollback")}[data-version="1"]')
    assert answer.value.status == 200, answer.value.text()
    after = stored(server, sid)
    assert after["framework_version"] == before["framework_version"] + 1
    assert after["skeleton"] == v1["skeleton"]
    page.wait_for_selector(
        f'{tid("skeleton-version")}.current[data-version="{after["framework_version"]}"]'
    )
    shot(page, "05-history")

    # the audit log of the session's events
    page.click(tid("tab-audit"))
    page.wait_for_selector(f'{tid("audit-row")}[data-type="skeleton.rolled_back"]')
    types = set(page.eval_on_selector_all(tid("audit-row"), "rs => rs.map(r => r.dataset.type)"))
    assert {"session.created", "run.claimed", "message.appended", "run.released"} <= types
    assert "message.delta" not in types
    logged = server.api("GET", f"{S}/{sid}/events?limit=1000")["events"]
    rolled = next(e for e in logged if e["type"] == "skeleton.rolled_back")
    row_of_rollback = page.locator(f'{tid("audit-row")}[data-type="skeleton.rolled_back"]')
    row_of_rollback.locator(tid("audit-toggle")).click()
    detail = page.locator(f'{tid("audit-row")}[data-type="skeleton.rolled_back"] + tr')
    assert rolled["hash"] in detail.text_content()
    shot(page, "06-audit")
    page.uncheck(tid("audit-hide-deltas"))
    page.wait_for_selector(f'{tid("audit-row")}[data-type="message.delta"]')

    # nothing from the token outside sessionStorage
    assert page.evaluate("sessionStorage.getItem('sessionstream.apiToken')") == server.token
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("document.cookie") == ""


def test_joining_a_turn_mid_reply(page_factory: Any, server: Server) -> None:
    """A page opened while a reply streams shows the text so far, then the rest, once."""
    session = server.session_with_node("Join")
    sid = session["id"]
    run = server.api("POST", f"{S}/{sid}/turn", {"message": "Write a follow-up email for CFOs"})
    run_id = run["runId"]
    page = page_factory()
    ids = session["campaign_id"], session["node_id"], sid
    connect(page, server, fragment="#campaign={}&node={}&session={}".format(*ids))
    wait_words(page, 3)
    assert server.api("GET", f"/api/runs/{run_id}")["run"]["status"] in ("queued", "running")
    page.wait_for_selector(f"{tid('cancel-run')}:visible")
    wait_turn_done(page, 2)
    reply = stored(server, sid)["messages"][-1]["content"]
    assert page.evaluate("id => window.__sessionstream.streamedText(id)", run_id) == reply
    assert page.evaluate("id => window.__sessionstream.run(id).joined", run_id), "no compact start"
    shown = page.locator(f"{tid('message')}[data-role='assistant'] {tid('message-text')}")
    assert shown.last.text_content() == reply


def test_phone_width_escapes_server_text(page_factory: Any, server: Server) -> None:
    session = server.session_with_node("Phone check")
    hostile = '<img src=x onerror="window.__pwned=1">'
    server.api(
        "PATCH",
        f"{S}/{session['id']}",
        {
            "title": hostile,
            "messages": [
                {"role": "user", "content": "<script>window.__pwned=2</script> hi %first_name%"},
                {"role": "assistant", "content": "Hello {{company}} & <b>bold</b>"},
            ],
            "draft_subject": "Hi %first_name%",
            "draft_body": "<i>not markup</i> for {{company}}",
        },
    )
    page = page_factory(390, 844)
    ids = session["campaign_id"], session["node_id"], session["id"]
    connect(page, server, fragment="#campaign={}&node={}&session={}".format(*ids))
    page.wait_for_selector(f'{tid("conn-state")}[data-state="live"]')
    assert page.text_content(tid("session-title")) == hostile
    texts = page.locator(f"{tid('message')} {tid('message-text')}").all_text_contents()
    assert texts == [
        "<script>window.__pwned=2</script> hi %first_name%",
        "Hello {{company}} & <b>bold</b>",
    ]
    assert page.locator(f"{tid('messages')} b, {tid('messages')} script").count() == 0
    assert page.locator(f"{tid('draft-body')} {tid('template-var')}").all_text_contents() == [
        "{{company}}"
    ]
    assert page.evaluate("window.__pwned") is None
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"horizontal overflow of {overflow}px at phone width"
    assert page.is_visible(tid("turn-input")) and page.is_visible(tid("tab-examples"))
    shot(page, "07-phone")


def test_api_errors_are_shown_as_messages(page_factory: Any, server: Server) -> None:
    page = page_factory()
    connect(page, server, token="not-a-real-token")
    page.wait_for_selector(tid("error-banner"))
    assert "unauthorized" in page.text_content(tid("error-text"))
    assert page.is_visible(tid("empty-state"))
    shot(page, "08-bad-token", full_page=False)

    assert page.evaluate("sessionStorage.length") == 0, "a rejected token is not kept"

    session = server.session_with_node("Errors")
    fragment = f"#campaign={session['campaign_id']}&session={session['id']}"
    page = page_factory()
    connect(page, server, fragment=fragment)
    page.wait_for_selector(tid("session-view"))
    page.click("summary >> text=Options")
    page.fill(tid("turn-vars"), "x" * 150)
    page.fill(tid("turn-input"), "hello")
    with page.expect_response(lambda r: r.url.endswith("/turn")) as answer:
        page.click(tid("turn-send"))
    assert answer.value.status == 400
    page.wait_for_selector(tid("error-banner"))
    body = json.loads(answer.value.text())
    assert body["error"]["code"] in page.text_content(tid("error-text"))
    assert stored(server, session["id"])["messages"] is None


def test_sample_leads_are_off_by_default(page_factory: Any, server: Server) -> None:
    """The leads table fills the Examples tab; it steers a chat only when asked to."""
    session = server.session_with_node("Finance")
    page = page_factory()
    ids = session["campaign_id"], session["node_id"], session["id"]
    connect(page, server, fragment="#campaign={}&node={}&session={}".format(*ids))
    page.wait_for_selector(f'{tid("conn-state")}[data-state="live"]')
    assert not page.is_checked(tid("turn-sample-leads"))

    def column(name: str) -> set[str]:
        return {str(v) for v in page.eval_on_selector_all(tid(name), "xs => xs.map(x => x.value)")}

    companies, positions = column("lead-company"), column("lead-position")
    assert companies, "the leads table has companies that could leak into a chat"
    briefs = (
        "Write an intro email for heads of finance at mid-size manufacturers",
        "We are Ledgerly: close the books 3 days faster. CTA: a 20 minute demo. Tone: direct.",
    )
    for index, brief in enumerate(briefs):
        page.fill(tid("turn-input"), brief)
        with page.expect_request(lambda r: r.url.endswith("/turn")) as sent:
            page.click(tid("turn-send"))
        assert "sampleLeads" not in (sent.value.post_data_json or {})
        wait_turn_done(page, 2 * (index + 1))
    replies = " ".join(m["content"] for m in stored(server, session["id"])["messages"])
    leaked = [w for w in companies | positions if re.search(rf"\b{re.escape(w)}\b", replies)]
    assert not leaked, replies

    # ticked, the table goes out as sample leads (without the ids)
    page.click("summary >> text=Options")
    page.check(tid("turn-sample-leads"))
    page.fill(tid("turn-input"), "Mention a customer by name")
    with page.expect_request(lambda r: r.url.endswith("/turn")) as sent:
        page.click(tid("turn-send"))
    leads = (sent.value.post_data_json or {})["sampleLeads"]
    assert {lead["company"] for lead in leads} == companies and all("id" not in x for x in leads)
    wait_turn_done(page, 6)
