"""The console's views of one worked session: runs, replay, history, audit, phone width.

One session is worked through the API first (four turns that reach a second
framework version, examples, then a rollback to version 1), and each test
reads it in the browser. Every expectation is computed from the server's API
(run rows, the events page), never written into the test.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from tests.browser.conftest import Server
from tests.browser.console_page import (
    S,
    assert_no_horizontal_overflow,
    doc_shot,
    events,
    open_session,
    stored,
    tid,
    turn,
    wait_idle,
)

pytestmark = pytest.mark.browser

TURNS = (
    "Write an intro email for enterprise VPs of Sales, stressing time-to-ROI",
    "We are Acme Analytics. Proof: customers cut reporting time by 40%. "
    "CTA: a 15 minute call. Tone: friendly but professional.",
    "Looks good, go ahead and draft it",
    "Make it shorter and more formal",
)


@pytest.fixture(scope="module")
def worked(server: Server) -> Iterator[dict[str, Any]]:
    """A session with turns, a second framework version, examples, and a rollback to v1."""
    session = server.session_with_node("Worked session")
    sid = session["id"]
    for message in TURNS:
        turn(server, sid, message)
    leads = [{"id": "lead-a", "first_name": "Ava", "company": "Umbrella"}]
    server.api("POST", f"{S}/{sid}/generate-examples", {"leads": leads})
    wait_idle(server, sid)
    row = stored(server, sid)
    assert row["framework_version"] >= 2 and row["draft_body"]
    server.api("POST", f"{S}/{sid}/skeleton/rollback", {"framework_version": 1})
    yield session


def run_events(log: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [e for e in log if e["stream_id"] == f"run-{run_id}"]


def stamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_runs_list_says_what_each_runs_events_say(
    page_factory: Any, server: Server, worked: dict[str, Any]
) -> None:
    log = events(server, worked["id"])
    run_ids = [e["data"]["run_id"] for e in log if e["type"] == "run.claimed"]
    assert len(run_ids) == len(TURNS) + 1
    page = page_factory()
    open_session(page, server, worked)
    page.click(tid("tab-runs"))
    cards = page.locator(tid("run-row"))
    cards.first.wait_for()
    assert [c.get_attribute("data-run-id") for c in cards.all()] == run_ids[::-1], "newest first"
    for run_id in run_ids:
        run = server.api("GET", f"/api/runs/{run_id}")["run"]
        card = page.locator(f'{tid("run-row")}[data-run-id="{run_id}"]')
        assert card.get_attribute("data-status") == run["status"] == "completed"
        assert card.locator(tid("run-status")).text_content() == run["status"]
        took = (stamp(run["finished_at"]) - stamp(run["started_at"])).total_seconds() * 1000
        shown_ms = float(card.locator(tid("run-duration")).get_attribute("data-ms") or "nan")
        assert abs(shown_ms - took) <= 1.0, (shown_ms, took)
        mine = run_events(log, run_id)
        deltas = [e for e in mine if e["type"] == "message.delta"]
        size = card.locator(tid("run-size"))
        if run["kind"] == "turn":
            assert size.get_attribute("data-chunks") == str(len(deltas))
            words = len("".join(e["data"]["text"] for e in deltas).split())
            assert size.get_attribute("data-words") == str(words)
            assert f"{words} words" in size.text_content()
        # the engine, then its model, as run.started records them (an offline run: no model)
        served = [
            e["data"][k]
            for e in mine
            for k in ("engine", "model")
            if isinstance(e["data"].get(k), str)
        ]
        engine = card.locator(tid("run-engine")).text_content()
        assert engine == (" · ".join(dict.fromkeys(served)) or "not recorded")
    doc_shot(page, "console-runs")


def test_replay_plays_a_reply_at_its_recorded_pace(
    page_factory: Any, server: Server, worked: dict[str, Any]
) -> None:
    log = events(server, worked["id"])
    turns = [
        e["data"]["run_id"]
        for e in log
        if e["type"] == "run.claimed" and e["data"]["kind"] == "turn"
    ]
    run_id = turns[-1]
    mine = run_events(log, run_id)
    started = stamp(next(e for e in mine if e["type"] == "run.started")["recorded_at"])
    deltas = [e for e in mine if e["type"] == "message.delta"]
    offsets = [(stamp(e["recorded_at"]) - started).total_seconds() * 1000 for e in deltas]
    assert offsets[-1] > 300, "a reply long enough that pace shows"
    reply = next(e for e in mine if e["type"] == "message.completed")["data"]["message"]["content"]

    page = page_factory()
    open_session(page, server, worked)
    page.click(tid("tab-runs"))
    page.click(f'{tid("run-row")}[data-run-id="{run_id}"] {tid("run-replay")}')
    page.wait_for_selector(f'{tid("run-replay-text")}[data-done="false"]')
    page.wait_for_function("() => window.__sessionstream.replay().done", timeout=30_000)
    replay = page.evaluate("window.__sessionstream.replay()")
    assert replay["runId"] == run_id and replay["text"] == reply
    assert page.text_content(tid("run-replay-text")) == reply
    trace = replay["trace"]
    assert len(trace) == len(deltas)
    for step, recorded in zip(trace, offsets, strict=True):
        assert abs(step["offset"] - recorded) <= 1.0
        # never early, and late by no more than a loaded machine's timer slack
        assert recorded - 2 <= step["shownAt"] <= recorded + 400, (step, recorded)


def test_history_labels_rollbacks_diffs_revisions_and_flags_a_stale_draft(
    page_factory: Any, server: Server, worked: dict[str, Any]
) -> None:
    sid = worked["id"]
    row = stored(server, sid)
    log = [e for e in events(server, sid) if e["stream_id"] == f"session-{sid}"]
    history = {h["framework_version"]: h["skeleton"] for h in row["skeleton_history"]}
    current = row["framework_version"]
    rolled = [e for e in log if e["type"] == "skeleton.rolled_back"]
    assert rolled and rolled[-1]["data"]["to_version"] == 1 and row["skeleton"] == history[1]
    # precondition for the notice: the draft was last written while v2 was current
    revisions = [e["position"] for e in log if e["type"] == "skeleton.revised"]
    last_draft = max(e["position"] for e in log if e["type"] == "draft.revised")
    assert revisions[1] < last_draft < rolled[-1]["position"] and history[2] != history[1]

    page = page_factory()
    open_session(page, server, worked)
    page.click(tid("tab-history"))
    head = f'{tid("skeleton-version")}.current[data-version="{current}"]'
    page.wait_for_selector(f"{head} {tid('rollback-label')}")
    assert page.text_content(f"{head} {tid('rollback-label')}") == "rollback to v1"
    for version in (1, 2):
        item = f'{tid("skeleton-version")}[data-version="{version}"]'
        assert page.locator(f"{item} {tid('rollback-label')}").count() == 0
        assert page.text_content(f"{item} {tid('origin-label')}") == "written by the assistant"
    notice = page.locator(f"{tid('panel-history')} {tid('draft-mismatch')}")
    assert notice.is_visible() and "v1" in notice.text_content()
    assert page.locator(f"{tid('draft-panel')} {tid('draft-mismatch')}").count() == 1

    # the diff of v1 and v2 is the server's: the skeleton fields that differ, before and after
    with page.expect_response(lambda r: "/diff?" in r.url and r.status == 200):
        page.select_option(tid("skeleton-compare-from"), label="v1")
        page.select_option(tid("skeleton-compare-to"), label="v2")
    page.wait_for_selector(f"{tid('skeleton-diff')} {tid('field-change')}")
    shown = field_changes(page)
    changed = {
        k for k in history[1].keys() | history[2].keys() if history[1].get(k) != history[2].get(k)
    }
    assert changed, "v1 and v2 differ"
    assert {field for field, _, _ in shown} == changed
    for field, before, after in shown:
        assert as_read(before) == history[1].get(field), field
        assert as_read(after) == history[2].get(field), field
    doc_shot(page, "console-diff", element=tid("skeleton-compare"))

    # the draft diff: the server's unified diff of the previous draft and the current one
    page.wait_for_selector(f"{tid('draft-diff')} {tid('draft-unified')}")
    box = page.locator(tid("draft-diff"))
    first, last = int(box.get_attribute("data-from") or 0), int(box.get_attribute("data-to") or 0)
    answer = server.api("GET", f"{S}/{sid}/diff?from={first}&to={last}")
    expected = [
        line
        for text in (answer["draft_subject"], answer["draft_body"])
        for line in text.split("\n")
        if line
    ]
    lines = page.eval_on_selector_all(
        f"{tid('draft-unified')} {tid('unified-line')}",
        "ls => ls.map(l => [l.dataset.kind, l.textContent.replace(/\\n$/, '')])",
    )
    assert [line for _, line in lines] == expected
    old = row["draft_history"][-1]
    for kind, line in lines:
        if kind == "del":
            assert line[1:] in (old["draft_subject"], *old["draft_body"].split("\n"))
        if kind == "add":
            assert line[1:] in (row["draft_subject"], *row["draft_body"].split("\n"))
    assert any(kind in ("add", "del") for kind, _ in lines), "the two drafts differ"

    # rolling back to v2, the skeleton the draft was written for, clears the notice
    with page.expect_response(lambda r: r.url.endswith("/skeleton/rollback")):
        page.click(f'{tid("skeleton-rollback")}[data-version="2"]')
    page.wait_for_selector(f'{tid("skeleton-version")}.current[data-version="{current + 1}"]')
    page.wait_for_selector(
        f"{tid('skeleton-version')}.current {tid('rollback-label')} >> text=rollback to v2"
    )
    assert page.locator(tid("draft-mismatch")).count() == 0
    page.reload()
    page.wait_for_selector(f'{tid("conn-state")}[data-state="live"]')
    page.click(tid("tab-history"))
    page.wait_for_selector(f"{tid('skeleton-version')}.current {tid('rollback-label')}")
    assert page.locator(tid("draft-mismatch")).count() == 0


def field_changes(page: Any) -> list[tuple[str, str, str]]:
    """The server diff's skeleton rows as shown: (field, before, after)."""
    rows = page.eval_on_selector_all(
        f"{tid('skeleton-diff')} {tid('field-change')}",
        "rs => rs.map(r => [r.dataset.field, r.querySelector('.dl').textContent,"
        " r.querySelector('.dr').textContent])",
    )
    return [(field, before, after) for field, before, after in rows]


def as_read(shown: str) -> Any:
    """A field's value as the console writes it: anything but text is JSON."""
    try:
        return json.loads(shown)
    except ValueError:
        return shown


def diff_rows(page: Any, testid: str) -> list[dict[str, Any]]:
    """The rows of one side-by-side diff: kind, and each side's text (None: no line there)."""
    return list(
        page.eval_on_selector_all(
            f"{tid(testid)} {tid('diff-row')}",
            """rs => rs.map(r => {
                const text = (cell) => cell.classList.contains('empty') ? null : cell.textContent;
                return {kind: r.dataset.kind, left: text(r.querySelector('.dl')),
                        right: text(r.querySelector('.dr'))};
            })""",
        )
    )


def lcs_length(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) - 1, -1, -1):
        for j in range(len(b) - 1, -1, -1):
            table[i][j] = (
                table[i + 1][j + 1] + 1 if a[i] == b[j] else max(table[i + 1][j], table[i][j + 1])
            )
    return table[0][0]


def test_fork_from_here_and_a_revision_no_event_names(page_factory: Any, server: Server) -> None:
    """A draft_history a PATCH wrote whole names no event, so its text is compared in the
    page; "Fork from here" opens a new session equal to this one at that revision."""
    session = server.session_with_node("Fork me")
    sid = session["id"]
    old = {"draft_subject": "Old subject", "draft_body": "keep\nold line"}
    server.api(
        "PATCH",
        f"{S}/{sid}",
        {"draft_history": [old], "draft_subject": "New subject", "draft_body": "keep\nnew line"},
    )
    page = page_factory()
    open_session(page, server, session)
    page.click(tid("tab-history"))
    page.wait_for_selector(f"{tid('draft-diff')} {tid('diff-row')}")
    rows = diff_rows(page, "draft-diff")
    assert [r["left"] for r in rows if r["left"] is not None] == [
        "Subject: Old subject",
        "",
        "keep",
        "old line",
    ]
    assert page.locator(tid("draft-unified")).count() == 0  # no server diff without versions

    patched = [e for e in events(server, sid) if e["type"] == "session.patched"][-1]
    fork = f'{tid("draft-version")}[data-index="current"] {tid("draft-fork")}'
    assert page.get_attribute(fork, "data-position") == str(patched["position"])
    with page.expect_response(lambda r: r.url.endswith("/fork") and r.status == 201) as answer:
        page.click(fork)
    forked = answer.value.json()["session"]
    page.wait_for_selector(f"{tid('session-id')} >> text=forked from {sid}")
    copy = stored(server, forked["id"])
    assert copy["forked_from"] == {"session_id": sid, "position": patched["position"]}
    assert (copy["draft_subject"], copy["draft_body"]) == ("New subject", "keep\nnew line")
    assert copy["draft_history"] == stored(server, sid)["draft_history"]
    assert copy["id"] != sid and stored(server, sid).get("forked_from") is None


def test_line_diff_is_minimal_on_random_texts(page_factory: Any, server: Server) -> None:
    page = page_factory()
    page.goto(server.url + "/")
    rng = random.Random(16)
    cases = [
        (
            [rng.choice("abc") for _ in range(rng.randint(0, 12))],
            [rng.choice("abc") for _ in range(rng.randint(0, 12))],
        )
        for _ in range(300)
    ]
    results = page.evaluate(
        """async (cases) => {
            const { diffLines } = await import('/static/console-diff.js');
            return cases.map(([a, b]) => diffLines(a, b));
        }""",
        cases,
    )
    for (a, b), rows in zip(cases, results, strict=True):
        assert [r["left"]["text"] for r in rows if r["left"]] == a
        assert [r["right"]["text"] for r in rows if r["right"]] == b
        same = [r for r in rows if r["kind"] == "same"]
        assert all(r["left"]["text"] == r["right"]["text"] for r in same)
        assert len(same) == lcs_length(a, b), (a, b, rows)


def actor_label(actor: Any) -> str:
    if not actor:
        return "unknown"
    return (
        f"{actor.get('type') or '?'} {str(actor.get('id') or '').removeprefix('run_')[:8]}".strip()
    )


def audit_types_fit(page: Any) -> list[str]:
    """Types whose cell hides part of them (the old console cut them with an ellipsis)."""
    return list(
        page.eval_on_selector_all(
            tid("audit-type"),
            """spans => spans.filter(s => {
                const cell = s.closest('td');
                const a = s.getBoundingClientRect(), c = cell.getBoundingClientRect();
                return cell.scrollWidth > cell.clientWidth + 1 || a.right > c.right + 1
                    || s.textContent !== s.closest('tr').dataset.type;
            }).map(s => s.textContent)""",
        )
    )


@pytest.mark.parametrize("width", [1280, 390])
def test_audit_is_newest_first_filterable_and_never_cuts_a_type(
    page_factory: Any, server: Server, worked: dict[str, Any], width: int
) -> None:
    log = events(server, worked["id"])
    page = page_factory(width, 900)
    open_session(page, server, worked)
    page.click(tid("tab-audit"))
    page.wait_for_selector(tid("audit-row"))
    positions = [
        int(p)
        for p in page.eval_on_selector_all(
            tid("audit-row"), "rs => rs.map(r => r.dataset.position)"
        )
    ]
    kept = [e["position"] for e in log if e["type"] != "message.delta"]
    assert positions == sorted(kept, reverse=True), "newest first, text deltas hidden"
    assert audit_types_fit(page) == []

    def shown() -> list[dict[str, str]]:
        return list(
            page.eval_on_selector_all(tid("audit-row"), "rs => rs.map(r => ({...r.dataset}))")
        )

    page.select_option(tid("audit-filter-type"), "message.delta")
    rows = shown()
    assert {r["type"] for r in rows} == {"message.delta"}
    assert len(rows) == sum(e["type"] == "message.delta" for e in log)
    page.select_option(tid("audit-filter-type"), "")

    someone = actor_label(next(e["actor"] for e in log if e["type"] == "session.created"))
    page.select_option(tid("audit-filter-actor"), someone)
    rows = shown()
    expected = [
        e for e in log if actor_label(e["actor"]) == someone and e["type"] != "message.delta"
    ]
    assert [int(r["position"]) for r in rows] == [e["position"] for e in reversed(expected)]
    page.select_option(tid("audit-filter-actor"), "")

    stream = next(e["stream_id"] for e in log if e["stream_id"].startswith("run-"))
    page.select_option(tid("audit-filter-stream"), stream)
    page.select_option(tid("audit-filter-type"), "run.completed")
    rows = shown()
    assert [r["stream"] for r in rows] == [stream] and rows[0]["type"] == "run.completed"
    assert audit_types_fit(page) == []
    if width == 1280:
        page.select_option(tid("audit-filter-type"), "")
        doc_shot(page, "console-audit-filters")


def test_every_view_fits_a_phone(page_factory: Any, server: Server, worked: dict[str, Any]) -> None:
    page = page_factory(390, 844)
    open_session(page, server, worked)
    assert_no_horizontal_overflow(page, "framework")
    for tab in ("history", "examples", "runs", "audit"):
        page.click(tid(f"tab-{tab}"))
        page.wait_for_selector(f"{tid(f'panel-{tab}')}:visible")
        assert_no_horizontal_overflow(page, tab)
    page.click(tid("tab-runs"))
    page.locator(tid("run-replay")).first.click()
    page.wait_for_function("() => window.__sessionstream.replay().done", timeout=30_000)
    assert_no_horizontal_overflow(page, "runs with a replay")
    doc_shot(page, "console-phone", element=".side-pane")
    page.click(tid("tab-history"))
    page.locator(tid("skeleton-diff")).scroll_into_view_if_needed()
    assert_no_horizontal_overflow(page, "history diff")
