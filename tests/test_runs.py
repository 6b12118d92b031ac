"""Runs: claims, the event sequence of a turn, terminal events, cancel, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

import pytest

from sessionstream.server.keys import RUNS, STORE
from tests.conftest import Api
from tests.scripted_engine import ScriptedEngine

S = "/api/campaigns/ai-chat-sessions"


async def wait_idle(api: Api, sid: str, token: str | None = None) -> dict[str, Any]:
    for _ in range(500):
        r = await api.client.get(f"{S}/{sid}", headers=api.h(token))
        row: dict[str, Any] = (await r.json())["session"]
        if row["task_status"] is None:
            return row
        await asyncio.sleep(0.01)
    raise AssertionError("session stayed busy")


async def test_turn_event_sequence_and_durable_results(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=30, skeleton={"hook": "h"}))
    session = await api.session()
    r = await api.client.post(
        f"{S}/{session['id']}/turn", json={"message": "brief"}, headers=api.h()
    )
    assert r.status == 200
    body = await r.json()
    assert set(body) == {"runId", "publicAccessToken"}
    row = await wait_idle(api, session["id"])
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["messages"][1]["content"] == "".join(f"w{i} " for i in range(30))
    assert row["skeleton"] == {"hook": "h"} and row["framework_version"] == 1
    assert row["draft_subject"] == "Hello %first_name%"
    events = await api.app[STORE].read_stream(f"run-{body['runId']}")
    types = [e.type for e in events]
    assert types[0] == "run.created" and types[1] == "run.started"
    assert types[-1] == "run.completed"
    assert sum(t.startswith("run.c") or t.startswith("run.f") for t in types[2:]) == 1
    deltas = "".join(e.data["text"] for e in events if e.type == "message.delta")
    assert deltas == row["messages"][1]["content"]
    assert types.count("message.delta") < 30  # coalesced, not one event per word
    r = await api.client.get(f"/api/runs/{body['runId']}", headers=api.h())
    assert (await r.json())["run"]["status"] == "completed"


async def test_fifty_concurrent_claims_one_winner(make_api: Any) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(gate=gate))
    session = await api.session()
    rs = await asyncio.gather(
        *[
            api.client.post(f"{S}/{session['id']}/turn", json={"message": f"m{i}"}, headers=api.h())
            for i in range(50)
        ]
    )
    statuses = sorted(r.status for r in rs)
    assert statuses.count(200) == 1 and statuses.count(409) == 49
    for r in rs:
        if r.status == 409:
            assert (await r.json())["error"]["code"] == "session_busy"
    gate.set()
    await wait_idle(api, session["id"])


async def test_engine_failure_ends_run_failed_and_frees_session(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(fail_with="provider exploded"))
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=api.h())
    run_id = (await r.json())["runId"]
    await wait_idle(api, session["id"])
    r = await api.client.get(f"/api/runs/{run_id}", headers=api.h())
    run = (await r.json())["run"]
    assert run["status"] == "failed" and "provider exploded" in run["error"]


async def test_cancel_and_patch_null_cancel(make_api: Any) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(gate=gate))
    session = await api.session()
    sid = session["id"]
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "x"}, headers=api.h())
    run_id = (await r.json())["runId"]
    r = await api.client.post(f"/api/runs/{run_id}/cancel", headers=api.h())
    assert r.status == 200 and (await r.json())["run"]["status"] == "canceled"
    assert (await wait_idle(api, sid))["task_status"] is None
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "y"}, headers=api.h())
    run2 = (await r.json())["runId"]
    r = await api.client.patch(f"{S}/{sid}", json={"task_status": None}, headers=api.h())
    assert r.status == 200 and (await r.json())["session"]["task_status"] is None
    r = await api.client.get(f"/api/runs/{run2}", headers=api.h())
    assert (await r.json())["run"]["status"] == "canceled"
    events = await api.app[STORE].read_stream(f"run-{run2}")
    assert [e.type for e in events].count("run.canceled") == 1


async def test_idempotency_key_returns_first_run(make_api: Any) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(gate=gate))
    session = await api.session()
    h = {**api.h(), "Idempotency-Key": "abc"}
    r1 = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=h)
    r2 = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=h)
    assert r1.status == r2.status == 200
    assert (await r1.json())["runId"] == (await r2.json())["runId"]
    gate.set()
    await wait_idle(api, session["id"])
    r3 = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=h)
    assert (await r3.json())["runId"] == (await r1.json())["runId"]
    assert api.app[RUNS].completed == 1


async def test_generate_examples_requires_skeleton(api: Api) -> None:
    session = await api.session()
    r = await api.client.post(
        f"{S}/{session['id']}/generate-examples", json={"leads": [{"id": "l1"}]}, headers=api.h()
    )
    assert r.status == 400
    assert (await r.json())["error"]["message"] == (
        "Session has no framework yet. Chat first to create one."
    )
    r = await api.client.get(f"{S}/{session['id']}", headers=api.h())
    assert (await r.json())["session"]["task_status"] is None


async def test_recovery_frees_orphaned_runs(make_api: Any) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(gate=gate))
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=api.h())
    run_id = (await r.json())["runId"]
    runs = api.app[RUNS]
    task = runs._tasks.pop(run_id)  # simulate a process that forgot the run (died)
    task.cancel()
    await asyncio.sleep(0.05)
    await runs.recover()
    row = await wait_idle(api, session["id"])
    assert row["task_status"] is None


async def test_paced_async_generator_engine_is_never_cut_short(make_api: Any) -> None:
    # coalescing timeouts must not cancel the generator's __anext__ (which would end it)
    api: Api = await make_api(engine=ScriptedEngine(words=60, pace_s=0.002))
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=api.h())
    run_id = (await r.json())["runId"]
    row = await wait_idle(api, session["id"])
    assert row["messages"][-1]["content"] == "".join(f"w{i} " for i in range(60))
    events = await api.app[STORE].read_stream(f"run-{run_id}")
    assert "".join(e.data["text"] for e in events if e.type == "message.delta") == "".join(
        f"w{i} " for i in range(60)
    )


async def test_hung_engine_times_out_and_frees_session(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(gate=asyncio.Event()), engine_timeout_s=0.2)
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=api.h())
    run_id = (await r.json())["runId"]
    await wait_idle(api, session["id"])
    r = await api.client.get(f"/api/runs/{run_id}", headers=api.h())
    run = (await r.json())["run"]
    assert run["status"] == "failed" and "sent nothing" in run["error"]


async def test_recovery_does_not_release_a_session_its_run_released_meanwhile(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery lists busy sessions, then reads each one's run: a run that ends between the
    two has released its session itself, and recovery must not release it a second time."""
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(gate=gate))
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=api.h())
    run_id = (await r.json())["runId"]
    store, runs = api.app[STORE], api.app[RUNS]
    real_get_doc = store.get_doc

    async def get_doc_after_the_run_ended(kind: str, key: str) -> Any:
        if kind == "run" and key == run_id:
            gate.set()
            await wait_idle(api, session["id"])
        return await real_get_doc(kind, key)

    monkeypatch.setattr(store, "get_doc", get_doc_after_the_run_ended)
    await runs.recover()
    monkeypatch.undo()
    events = await store.read_stream(f"session-{session['id']}")
    assert [e.data["run_id"] for e in events if e.type == "run.released"] == [run_id]


async def test_a_finished_run_reads_the_same_after_a_restart(make_api: Any) -> None:
    """A finished run keeps no document row (``DocIndex.kept``): a server started afresh,
    with nothing cached, folds it from the run's stream and answers the same body, and
    still only to its owner."""
    api: Api = await make_api(engine=ScriptedEngine())
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=api.h())
    run_id = (await r.json())["runId"]
    await wait_idle(api, session["id"])
    before = await (await api.client.get(f"/api/runs/{run_id}", headers=api.h())).json()
    assert before["run"]["status"] == "completed" and before["run"]["output"]
    path = api.app[STORE].path  # type: ignore[attr-defined]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        kept = conn.execute("SELECT COUNT(*) FROM docs WHERE key = ?", (run_id,)).fetchone()
    assert kept == (0,)  # served from the cache the ending write filled
    await api.client.close()  # the server stops, its store closes
    again: Api = await make_api(engine=ScriptedEngine())
    r = await again.client.get(f"/api/runs/{run_id}", headers=api.h())
    assert r.status == 200 and await r.json() == before
    r = await again.client.get(f"/api/runs/{run_id}", headers=again.h(again.token_b))
    assert r.status == 404
