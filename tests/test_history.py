"""History over HTTP: the events API, rollbacks, ETag / If-Match, as_of edges."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from sessionstream.core.errors import ValidationFailed
from sessionstream.core.readmodels import SessionRow
from sessionstream.core.vocabulary import EventType
from sessionstream.engines.base import DraftUpdate, SkeletonUpdate, StreamItem, TextDelta, TurnInput
from sessionstream.eventstore.model import GENESIS_HASH, RecordedEvent, recompute_hash
from sessionstream.server.keys import STORE
from sessionstream.services.history import draft_rollback, skeleton_rollback
from tests.conftest import Api
from tests.scripted_engine import ScriptedEngine

S = "/api/campaigns/ai-chat-sessions"


class RevisingEngine(ScriptedEngine):
    """Each turn proposes a different skeleton and draft, so history has distinct versions."""

    async def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        self.turns += 1
        n = self.turns
        for i in range(self.words):
            yield TextDelta(f"t{n}w{i} ")
            await asyncio.sleep(self.pace_s)
        if self.gate is not None:
            await self.gate.wait()
        yield SkeletonUpdate({"hook": f"hook {n}", "blocks": [{"text": f"block {n}"}]})
        yield DraftUpdate(f"Subject {n} for %first_name%", f"Body {n} for %company%")


async def idle(api: Api, sid: str) -> dict[str, Any]:
    for _ in range(500):
        r = await api.client.get(f"{S}/{sid}", headers=api.h())
        row: dict[str, Any] = (await r.json())["session"]
        if row["task_status"] is None:
            return row
        await asyncio.sleep(0.01)
    raise AssertionError("session stayed busy")


async def turn(api: Api, sid: str, message: str = "go") -> str:
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": message}, headers=api.h())
    assert r.status == 200, await r.text()
    run_id: str = (await r.json())["runId"]
    await idle(api, sid)
    return run_id


async def all_events(api: Api, sid: str, limit: int = 7, token: str | None = None) -> list[Any]:
    events: list[Any] = []
    after = 0
    while True:
        r = await api.client.get(
            f"{S}/{sid}/events", params={"after": after, "limit": limit}, headers=api.h(token)
        )
        assert r.status == 200, await r.text()
        page = await r.json()
        assert len(page["events"]) <= limit
        events.extend(page["events"])
        if page["next"] is None:
            return events
        assert page["next"] == page["events"][-1]["position"]
        after = page["next"]


# the events API ------------------------------------------------------------------------
async def test_events_are_the_sessions_and_its_runs_in_log_order(make_api: Any) -> None:
    api: Api = await make_api(engine=RevisingEngine(words=6))
    session = await api.session()
    sid = session["id"]
    run_id = await turn(api, sid)
    r = await api.client.patch(f"{S}/{sid}", json={"title": "T"}, headers=api.h())
    assert r.status == 200
    events = await all_events(api, sid)
    store = api.app[STORE]
    expected = await store.read_all(0, limit=10_000, keys=frozenset({f"session-{sid}"}))
    assert [e["position"] for e in events] == [e.position for e in expected]
    assert {e["stream_id"] for e in events} == {f"session-{sid}", f"run-{run_id}"}
    positions = [e["position"] for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    for event in events:
        assert {
            "position",
            "stream_id",
            "version",
            "type",
            "data",
            "actor",
            "recorded_at",
            "hash",
        } <= set(event)
    by_type = {e["type"]: e for e in events}
    assert by_type["session.created"]["actor"] == {"type": "user", "id": api.user_a}
    assert by_type["message.delta"]["actor"] == {"type": "run", "id": run_id}
    assert by_type["session.patched"]["data"] == {"fields": {"title": "T"}}
    # the API alone is enough to check every hash chain
    heads: dict[str, str] = {}
    for event in events:
        record = RecordedEvent.from_json({**event, "correlation_id": None})
        prev = heads.get(event["stream_id"], GENESIS_HASH)
        assert recompute_hash(prev, record) == event["hash"]
        heads[event["stream_id"]] = event["hash"]


async def test_events_after_cursor_default_limit_and_bad_params(api: Api) -> None:
    session = await api.session()
    sid = session["id"]
    for i in range(105):
        r = await api.client.patch(f"{S}/{sid}", json={"title": f"t{i}"}, headers=api.h())
        assert r.status == 200
    r = await api.client.get(f"{S}/{sid}/events", headers=api.h())
    page = await r.json()
    assert len(page["events"]) == 100 and page["next"] == page["events"][-1]["position"]
    r = await api.client.get(f"{S}/{sid}/events?after={page['next']}", headers=api.h())
    rest = await r.json()
    assert len(rest["events"]) == 6 and rest["next"] is None
    assert rest["events"][0]["position"] > page["next"]
    r = await api.client.get(f"{S}/{sid}/events?limit=1000", headers=api.h())
    assert len((await r.json())["events"]) == 106
    for query in (
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "after=-1",
        "after=x",
        "after=1.5",
        "after=" + "9" * 30,
        "limit=²",
    ):
        r = await api.client.get(f"{S}/{sid}/events?{query}", headers=api.h())
        assert r.status == 400, query
        assert (await r.json())["error"]["code"] == "validation_error"


async def test_events_owner_only_and_readable_after_delete(api: Api) -> None:
    session = await api.session()
    sid = session["id"]
    r = await api.client.get(f"{S}/{sid}/events", headers=api.h(api.token_b))
    assert r.status == 404
    r = await api.client.get(f"{S}/00000000-0000-4000-8000-000000000000/events", headers=api.h())
    assert r.status == 404
    r = await api.client.delete(f"{S}/{sid}", headers=api.h())
    assert r.status == 200
    assert (await api.client.get(f"{S}/{sid}", headers=api.h())).status == 404
    events = await all_events(api, sid)
    assert [e["type"] for e in events] == ["session.created", "session.deleted"]
    r = await api.client.get(f"{S}/{sid}/events", headers=api.h(api.token_b))
    assert r.status == 404


# rollbacks -------------------------------------------------------------------------------
async def three_versions(api: Api) -> tuple[str, dict[str, Any]]:
    session = await api.session()
    sid = session["id"]
    for i in range(3):
        await turn(api, sid, f"turn {i}")
    return sid, await idle(api, sid)


async def test_skeleton_rollback_makes_version_current_as_a_new_revision(make_api: Any) -> None:
    api: Api = await make_api(engine=RevisingEngine(words=3))
    sid, before = await three_versions(api)
    assert before["framework_version"] == 3
    assert [h["framework_version"] for h in before["skeleton_history"]] == [1, 2]
    r = await api.client.patch(
        f"{S}/{sid}",
        json={"generated_examples": [{"lead_id": "L", "subject": "s", "body": "b"}]},
        headers=api.h(),
    )
    assert r.status == 200
    v1 = before["skeleton_history"][0]["skeleton"]
    r = await api.client.post(
        f"{S}/{sid}/skeleton/rollback", json={"framework_version": 1}, headers=api.h()
    )
    assert r.status == 200, await r.text()
    row = (await r.json())["session"]
    assert row["skeleton"] == v1
    assert row["framework_version"] == 4
    assert row["generated_examples"] is None
    assert row["skeleton_history"][:2] == before["skeleton_history"]  # history intact
    assert row["skeleton_history"][2]["framework_version"] == 3
    assert row["skeleton_history"][2]["skeleton"] == before["skeleton"]
    assert row["draft_subject"] == before["draft_subject"]  # only the skeleton moved
    stored = await (await api.client.get(f"{S}/{sid}", headers=api.h())).json()
    assert stored["session"] == row
    assert (
        r.headers["ETag"] == (await api.client.get(f"{S}/{sid}", headers=api.h())).headers["ETag"]
    )
    events = await all_events(api, sid, limit=1000)
    last = events[-1]
    assert last["type"] == "skeleton.rolled_back"
    assert last["data"] == {"to_version": 1, "skeleton": v1}
    assert last["actor"] == {"type": "user", "id": api.user_a}
    # and back again to 3, which is now in the history
    r = await api.client.post(
        f"{S}/{sid}/skeleton/rollback", json={"framework_version": 3}, headers=api.h()
    )
    row = (await r.json())["session"]
    assert row["skeleton"] == before["skeleton"] and row["framework_version"] == 5


async def test_skeleton_rollback_refusals(make_api: Any) -> None:
    api: Api = await make_api(engine=RevisingEngine(words=3))
    sid, before = await three_versions(api)
    cases = [
        ({"framework_version": 3}, 400, "already current"),
        ({"framework_version": 9}, 400, "not in this session's skeleton_history"),
        ({"framework_version": 0}, 400, "not in this session's skeleton_history"),
        ({"framework_version": -1}, 400, "not in"),
        ({"framework_version": "1"}, 400, "framework_version"),
        ({"framework_version": True}, 400, "framework_version"),
        ({}, 400, "framework_version"),
    ]
    for body, status, text in cases:
        r = await api.client.post(f"{S}/{sid}/skeleton/rollback", json=body, headers=api.h())
        assert r.status == status, (body, await r.text())
        assert text in (await r.json())["error"]["message"], body
    r = await api.client.post(
        f"{S}/{sid}/skeleton/rollback", json={"framework_version": 1}, headers=api.h(api.token_b)
    )
    assert r.status == 404
    after = await idle(api, sid)
    assert after == before  # nothing written by any refusal


async def test_draft_rollback(make_api: Any) -> None:
    api: Api = await make_api(engine=RevisingEngine(words=3))
    sid, before = await three_versions(api)
    assert [h["draft_subject"] for h in before["draft_history"]] == [
        "Subject 1 for %first_name%",
        "Subject 2 for %first_name%",
    ]
    r = await api.client.post(f"{S}/{sid}/draft/rollback", json={"index": 0}, headers=api.h())
    assert r.status == 200, await r.text()
    row = (await r.json())["session"]
    assert row["draft_subject"] == "Subject 1 for %first_name%"
    assert row["draft_body"] == "Body 1 for %company%"
    assert row["draft_history"][:2] == before["draft_history"]
    assert row["draft_history"][2]["draft_subject"] == before["draft_subject"]
    assert row["skeleton"] == before["skeleton"]
    assert row["framework_version"] == before["framework_version"]
    events = await all_events(api, sid, limit=1000)
    assert events[-1]["type"] == "draft.rolled_back"
    assert events[-1]["data"] == {
        "index": 0,
        "draft_subject": "Subject 1 for %first_name%",
        "draft_body": "Body 1 for %company%",
    }
    for body in ({"index": 3}, {"index": 99}, {"index": -1}, {"index": "0"}, {}):
        r = await api.client.post(f"{S}/{sid}/draft/rollback", json=body, headers=api.h())
        assert r.status == 400, body


async def test_rollback_while_a_run_is_active_is_409(make_api: Any) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=RevisingEngine(words=3, gate=gate))
    session = await api.session()
    sid = session["id"]
    gate.set()
    await turn(api, sid)
    await turn(api, sid)
    gate.clear()
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "x"}, headers=api.h())
    assert r.status == 200
    for path, body in (
        ("skeleton/rollback", {"framework_version": 1}),
        ("draft/rollback", {"index": 0}),
    ):
        r = await api.client.post(f"{S}/{sid}/{path}", json=body, headers=api.h())
        assert r.status == 409, path
        assert (await r.json())["error"]["code"] == "session_busy"
    gate.set()
    await idle(api, sid)
    r = await api.client.post(
        f"{S}/{sid}/skeleton/rollback", json={"framework_version": 1}, headers=api.h()
    )
    assert r.status == 200


async def test_rollback_of_deleted_session_is_404(make_api: Any) -> None:
    api: Api = await make_api(engine=RevisingEngine(words=3))
    sid, _ = await three_versions(api)
    await api.client.delete(f"{S}/{sid}", headers=api.h())
    r = await api.client.post(
        f"{S}/{sid}/skeleton/rollback", json={"framework_version": 1}, headers=api.h()
    )
    assert r.status == 404


async def test_concurrent_rollbacks_each_see_the_row_they_change(make_api: Any) -> None:
    """Expected-version appends: racing rollbacks serialise; none is lost or doubled."""
    api: Api = await make_api(engine=RevisingEngine(words=3))
    sid, before = await three_versions(api)
    bodies = [{"framework_version": v} for v in (1, 2, 1, 2, 1, 2, 1, 2)]
    rs = await asyncio.gather(
        *[api.client.post(f"{S}/{sid}/skeleton/rollback", json=b, headers=api.h()) for b in bodies]
    )
    ok = [r for r in rs if r.status == 200]
    assert all(r.status in (200, 400) for r in rs)
    row = await idle(api, sid)
    assert row["framework_version"] == before["framework_version"] + len(ok)
    assert len(row["skeleton_history"]) == len(before["skeleton_history"]) + len(ok)
    events = await all_events(api, sid, limit=1000)
    assert sum(e["type"] == "skeleton.rolled_back" for e in events) == len(ok)


# ETag / If-Match -----------------------------------------------------------------------
async def test_etag_if_match_on_get_patch_and_rollback(make_api: Any) -> None:
    api: Api = await make_api(engine=RevisingEngine(words=3))
    sid, _ = await three_versions(api)
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    tag = r.headers["ETag"]
    assert tag.startswith('"') and tag.endswith('"')
    # PATCH with the current tag succeeds and moves the tag on
    r = await api.client.patch(
        f"{S}/{sid}", json={"title": "a"}, headers={**api.h(), "If-Match": tag}
    )
    assert r.status == 200
    new_tag = r.headers["ETag"]
    assert int(new_tag.strip('"')) == int(tag.strip('"')) + 1
    # the old tag is now stale: 412 and nothing written
    r = await api.client.patch(
        f"{S}/{sid}", json={"title": "b"}, headers={**api.h(), "If-Match": tag}
    )
    assert r.status == 412
    assert (await r.json())["error"]["code"] == "precondition_failed"
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    assert (await r.json())["session"]["title"] == "a" and r.headers["ETag"] == new_tag
    # weak form and * are accepted; garbage is refused
    r = await api.client.patch(
        f"{S}/{sid}", json={"title": "c"}, headers={**api.h(), "If-Match": f"W/{new_tag}"}
    )
    assert r.status == 200
    tag = r.headers["ETag"]
    r = await api.client.patch(
        f"{S}/{sid}", json={"title": "d"}, headers={**api.h(), "If-Match": "*"}
    )
    assert r.status == 200
    r = await api.client.patch(
        f"{S}/{sid}", json={"title": "e"}, headers={**api.h(), "If-Match": '"v7"'}
    )
    assert r.status == 412
    # rollback: stale tag 412 (nothing written), current tag 200 with a new tag
    before = await (await api.client.get(f"{S}/{sid}", headers=api.h())).json()
    r = await api.client.post(
        f"{S}/{sid}/skeleton/rollback",
        json={"framework_version": 1},
        headers={**api.h(), "If-Match": tag},
    )
    assert r.status == 412
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    assert (await r.json()) == before
    current = r.headers["ETag"]
    r = await api.client.post(
        f"{S}/{sid}/skeleton/rollback",
        json={"framework_version": 1},
        headers={**api.h(), "If-Match": current},
    )
    assert r.status == 200
    assert int(r.headers["ETag"].strip('"')) == int(current.strip('"')) + 1
    r = await api.client.post(
        f"{S}/{sid}/draft/rollback", json={"index": 0}, headers={**api.h(), "If-Match": current}
    )
    assert r.status == 412
    r = await api.client.post(
        f"{S}/{sid}/draft/rollback",
        json={"index": 0},
        headers={**api.h(), "If-Match": r.headers.get("ETag") or "0"},
    )
    assert r.status == 412  # an error carries no ETag: "0" is stale too


async def test_etag_tracks_writes_by_runs(make_api: Any) -> None:
    api: Api = await make_api(engine=RevisingEngine(words=3))
    session = await api.session()
    sid = session["id"]
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    tag = r.headers["ETag"]
    await turn(api, sid)
    r = await api.client.patch(
        f"{S}/{sid}", json={"title": "late"}, headers={**api.h(), "If-Match": tag}
    )
    assert r.status == 412  # the turn changed the session since that read


# as_of edges ------------------------------------------------------------------------------
async def test_as_of_bad_values_are_400_and_unknown_points_404(make_api: Any) -> None:
    api: Api = await make_api(engine=RevisingEngine(words=3))
    session = await api.session()
    sid = session["id"]
    store = api.app[STORE]
    created = (await store.read_stream(f"session-{sid}"))[0]
    for bad in ("x", "-1", "1.5", "2026-01-01", "2026-13-01T00:00:00Z", "9" * 30, "²", ""):
        r = await api.client.get(f"{S}/{sid}", params={"as_of": bad}, headers=api.h())
        assert r.status == 400, bad
    for before in (0, created.position - 1, "2000-01-01T00:00:00Z"):
        r = await api.client.get(f"{S}/{sid}", params={"as_of": before}, headers=api.h())
        assert r.status == 404, before
    r = await api.client.get(f"{S}/{sid}", params={"as_of": created.position}, headers=api.h())
    assert r.status == 200
    body = await r.json()
    assert body["as_of"] == created.position and body["session"] == session
    r = await api.client.get(
        f"{S}/{sid}", params={"as_of": created.position}, headers=api.h(api.token_b)
    )
    assert r.status == 404
    r = await api.client.get(
        f"{S}/{sid}", params={"as_of": "2999-01-01T00:00:00Z"}, headers=api.h()
    )
    assert (await r.json())["session"] == session


async def test_as_of_looks_back_at_a_deleted_session(make_api: Any) -> None:
    api: Api = await make_api(engine=RevisingEngine(words=3))
    session = await api.session()
    sid = session["id"]
    r = await api.client.patch(f"{S}/{sid}", json={"title": "kept"}, headers=api.h())
    row = (await r.json())["session"]
    head = await api.app[STORE].head_position()
    await api.client.delete(f"{S}/{sid}", headers=api.h())
    r = await api.client.get(f"{S}/{sid}", params={"as_of": head}, headers=api.h())
    assert r.status == 200 and (await r.json())["session"] == row
    now = await api.app[STORE].head_position()
    r = await api.client.get(f"{S}/{sid}", params={"as_of": now}, headers=api.h())
    assert r.status == 404


# the rollback deciders, pure (no store, no event loop) ------------------------------------
def row(**fields: Any) -> SessionRow:
    base = {
        "id": "s1",
        "user_id": "u1",
        "campaign_id": "c1",
        "node_id": "n1",
        "title": None,
        "messages": None,
        "draft_subject": None,
        "draft_body": None,
        "skeleton": None,
        "skeleton_history": None,
        "draft_history": None,
        "framework_version": None,
        "generated_examples": None,
        "task_status": None,
        "created_at": "t0",
        "updated_at": "t0",
    }
    return cast(SessionRow, {**base, **fields})


def v(version: Any, skeleton: Any) -> dict[str, Any]:
    return {"framework_version": version, "skeleton": skeleton, "replaced_at": "t"}


SKELETON_DECISIONS: list[tuple[str, SessionRow, int, Any]] = [
    (
        "the newest entry with that version wins (a PATCH may repeat one)",
        row(
            skeleton={"v": 3},
            framework_version=3,
            skeleton_history=[v(1, {"a": 1}), v(1, {"b": 1})],
        ),
        1,
        (EventType.SKELETON_ROLLED_BACK, {"to_version": 1, "skeleton": {"b": 1}}),
    ),
    (
        "the current version is refused, not appended as a no-op revision",
        row(skeleton={"v": 2}, framework_version=2, skeleton_history=[v(1, {"a": 1})]),
        2,
        "already current",
    ),
    (
        "JSON true is not version 1",
        row(skeleton={"v": 2}, framework_version=2, skeleton_history=[v(True, {"a": 1})]),
        1,
        "not in this session's skeleton_history",
    ),
    (
        "an entry without a skeleton object restores nothing",
        row(skeleton={"v": 2}, framework_version=2, skeleton_history=[v(1, "text")]),
        1,
        "holds no skeleton",
    ),
    (
        "a PATCHed history that is not a list has no versions",
        row(skeleton={"v": 2}, framework_version=2, skeleton_history=cast(Any, {"1": {}})),
        1,
        "not in this session's skeleton_history",
    ),
]


@pytest.mark.parametrize(
    ("why", "current", "version", "expected"),
    SKELETON_DECISIONS,
    ids=[t[0] for t in SKELETON_DECISIONS],
)
def test_skeleton_rollback_decisions(
    why: str, current: SessionRow, version: int, expected: Any
) -> None:
    decide = skeleton_rollback(version)
    if isinstance(expected, str):
        with pytest.raises(ValidationFailed, match=expected):
            decide(current)
    else:
        assert decide(current) == expected, why


def test_an_unknown_version_lists_the_ones_there_are() -> None:
    current = row(
        skeleton={"v": 4}, framework_version=4, skeleton_history=[v(3, {}), v(1, {}), "junk"]
    )
    with pytest.raises(ValidationFailed) as caught:
        skeleton_rollback(2)(current)
    assert caught.value.details == {"available": [1, 3], "current": 4}


DRAFT_DECISIONS: list[tuple[str, list[Any] | None, int, Any]] = [
    (
        "an entry is restored by its index",
        [{"draft_subject": "s0", "draft_body": "b0"}, {"draft_subject": "s1", "draft_body": None}],
        1,
        (EventType.DRAFT_ROLLED_BACK, {"index": 1, "draft_subject": "s1", "draft_body": None}),
    ),
    ("no history", None, 0, "has 0 entries; index 0 does not exist"),
    ("past the end", [{"draft_subject": "s", "draft_body": "b"}], 1, "has 1 entries"),
    ("a PATCHed entry that is no draft", [{"draft_subject": 7, "draft_body": "b"}], 0, "no draft"),
]


@pytest.mark.parametrize(
    ("why", "history", "index", "expected"), DRAFT_DECISIONS, ids=[t[0] for t in DRAFT_DECISIONS]
)
def test_draft_rollback_decisions(
    why: str, history: list[Any] | None, index: int, expected: Any
) -> None:
    decide = draft_rollback(index)
    current = row(draft_subject="now", draft_body="now", draft_history=history)
    if isinstance(expected, str):
        with pytest.raises(ValidationFailed, match=expected):
            decide(current)
    else:
        assert decide(current) == expected, why


async def test_an_empty_patch_with_a_stale_tag_says_what_every_stale_tag_says(api: Api) -> None:
    # the empty PATCH had its own copy of the If-Match rule, without the advice to reload
    session = await api.session()
    sid = session["id"]
    r = await api.client.patch(f"{S}/{sid}", json={"title": "a"}, headers=api.h())
    for body in ({}, {"title": "b"}):
        r = await api.client.patch(f"{S}/{sid}", json=body, headers={**api.h(), "If-Match": '"1"'})
        assert r.status == 412
        assert (await r.json())["error"]["message"] == (
            "session is at version 2, not 1: reload and retry"
        )
