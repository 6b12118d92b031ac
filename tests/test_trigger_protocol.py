"""Trigger.dev realtime protocol: the Electric run feed and the SSE run stream.

Most tests drive a run written straight to the store (``FakeRun``), so each
event, and therefore each wake-up or frame, happens exactly when the test
says; one test goes through a real turn end to end.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import aiohttp
import pytest

from sessionstream.core.errors import ValidationFailed
from sessionstream.eventstore.model import NewEvent
from sessionstream.server.cursor import LAST_EVENT_ID, offset_seq, parse_cursor
from sessionstream.server.frames import chat_stream_event
from sessionstream.server.keys import RUN_TOKENS, STORE
from sessionstream.server.realtime import REALTIME
from sessionstream.server.trigger import TRIGGER
from sessionstream.server.trigger_shape import (
    COLUMNS,
    parse_timeout_seconds,
    pg_array,
    run_row,
    shape_timestamp,
)
from tests.conftest import Api
from tests.scripted_engine import ScriptedEngine

S = "/api/campaigns/ai-chat-sessions"
FAST: dict[str, Any] = {"trigger_poll_s": 0.3, "trigger_ping_s": 0.1}
NO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$")


# pure core ------------------------------------------------------------------------------
def _run(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "run_" + "a" * 32,
        "kind": "turn",
        "session_id": "s1",
        "user_id": "u1",
        "status": "running",
        "created_at": "2025-01-01T12:00:00.000Z",
        "started_at": "2025-01-01T12:00:00.250Z",
        "finished_at": None,
        "updated_at": "2025-01-01T12:00:01.000Z",
        "error": None,
        "seq": 7,
        "progress": None,
        "output": None,
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("status", "error", "db"),
    [
        ("queued", None, "PENDING"),
        ("running", None, "EXECUTING"),
        ("completed", None, "COMPLETED_SUCCESSFULLY"),
        ("failed", "provider exploded", "COMPLETED_WITH_ERRORS"),
        ("failed", "interrupted", "SYSTEM_FAILURE"),
        ("canceled", None, "CANCELED"),
    ],
)
def test_status_names_are_the_database_enum(status: str, error: str | None, db: str) -> None:
    assert run_row(_run(status=status, error=error))["status"] == db


def test_row_values_are_postgres_text() -> None:
    done = _run(
        status="completed",
        finished_at="2025-01-01T12:00:02.750Z",
        output={"message": "hi"},
        progress={"done": 1, "total": 2},
    )
    row = run_row(done, {"message": "brief"})
    assert set(row) == set(COLUMNS)
    assert row["friendlyId"] == row["id"] == done["id"]
    assert row["taskIdentifier"] == "framework-chat-turn"
    for column in ("createdAt", "updatedAt", "startedAt", "completedAt", "queuedAt"):
        assert NO_Z.match(str(row[column])), (column, row[column])
    assert row["completedAt"] == "2025-01-01T12:00:02.750"
    assert row["usageDurationMs"] == "2500"
    assert row["isTest"] == "f" and row["number"] == "0"
    assert json.loads(str(row["output"])) == {"message": "hi"}
    assert row["outputType"] == row["metadataType"] == row["payloadType"] == "application/json"
    assert json.loads(str(row["payload"])) == {"message": "brief"}
    meta = json.loads(str(row["metadata"]))
    assert meta == {
        "sessionId": "s1",
        "kind": "turn",
        "status": "completed",
        "progress": {"done": 1, "total": 2},
    }
    assert row["realtimeStreams"] == '{"chat"}'
    assert row["error"] is None


def test_running_row_has_no_output_and_failed_row_has_string_error() -> None:
    running = run_row(_run(output={"x": 1}))
    assert running["output"] is None and running["outputType"] is None
    assert running["completedAt"] is None and running["usageDurationMs"] == "0"
    failed = run_row(_run(status="failed", error="boom", finished_at="2025-01-01T12:00:03Z"))
    assert json.loads(str(failed["error"])) == {"type": "STRING_ERROR", "raw": "boom"}
    assert run_row(_run(kind="examples"))["taskIdentifier"] == "generate-email-examples"


def test_small_parsers() -> None:
    assert shape_timestamp("2025-01-01T12:00:00Z") == "2025-01-01T12:00:00.000"
    assert shape_timestamp(None) is None
    assert pg_array(['a"b', "c\\d"]) == '{"a\\"b","c\\\\d"}'
    assert offset_seq("1735732800000_12") == 12
    for bad in ("12", "x_1", "1_", "_3"):
        with pytest.raises(ValidationFailed):
            offset_seq(bad)
    assert parse_cursor(None, LAST_EVENT_ID) is None and parse_cursor(" 4 ", LAST_EVENT_ID) == 4
    for bad in ("1736950000000-0", "-3"):
        with pytest.raises(ValidationFailed):
            parse_cursor(bad, LAST_EVENT_ID)
    assert parse_timeout_seconds("0.2") == 1.0 and parse_timeout_seconds("9999") == 600.0
    with pytest.raises(ValidationFailed):
        parse_timeout_seconds("soon")


# fixtures ---------------------------------------------------------------------------------
class FakeRun:
    """A run written by the test, one event at a time."""

    def __init__(self, api: Api, kind: str = "turn") -> None:
        self.api = api
        self.id = "run_" + uuid.uuid4().hex
        self.session_id = str(uuid.uuid4())
        self.kind = kind
        self.token = api.app[RUN_TOKENS].mint(self.id, api.user_a, token_ref=api.ref())

    @property
    def stream(self) -> str:
        return f"run-{self.id}"

    async def add(self, type_: str, data: dict[str, Any] | None = None) -> int:
        if type_ == "run.created":
            data = {
                "run_id": self.id,
                "kind": self.kind,
                "session_id": self.session_id,
                "user_id": self.api.user_a,
                "input": {"message": "brief"},
            }
        meta = {"actor": {"type": "run", "id": self.id}, "session_id": self.session_id}
        event = NewEvent(type_, data or {}, meta, correlation_id=f"session-{self.session_id}")
        result = await self.api.app[STORE].append(self.stream, [event])
        return result.version

    async def start(self) -> FakeRun:
        await self.add("run.created")
        await self.add("run.started", {"kind": self.kind})
        return self

    def h(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


async def fake_run(api: Api) -> FakeRun:
    return await FakeRun(api).start()


def feed_url(run_id: str, **query: str) -> str:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return f"/realtime/v1/runs/{run_id}" + (f"?{qs}" if qs else "")


async def snapshot(api: Api, run: FakeRun) -> tuple[aiohttp.ClientResponse, list[Any]]:
    r = await api.client.get(feed_url(run.id, offset="-1", log="full"), headers=run.h())
    assert r.status == 200, await r.text()
    return r, await r.json()


async def live(api: Api, run: FakeRun, offset: str) -> tuple[aiohttp.ClientResponse, list[Any]]:
    url = feed_url(run.id, offset=offset, handle=f"run-{run.id}", live="true", cursor="1")
    r = await api.client.get(url, headers=run.h())
    assert r.status == 200, await r.text()
    return r, await r.json()


def frames(text: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        out.append((int(fields["id"]), json.loads(fields["data"])))
    return out


# the run feed ---------------------------------------------------------------------------
async def test_snapshot_headers_and_row(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await fake_run(api)
    r, body = await snapshot(api, run)
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.headers["Cache-Control"] == "no-store"
    assert re.fullmatch(r"\d+_2", r.headers["electric-offset"])
    assert r.headers["electric-handle"] == f"run-{run.id}"
    schema = json.loads(r.headers["electric-schema"])
    assert schema["isTest"] == {"type": "bool"} and schema["realtimeStreams"]["dims"] == 1
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Expose-Headers"] == "*"
    assert "electric-up-to-date" in r.headers
    insert, control = body
    assert control == {"headers": {"control": "up-to-date"}}
    assert insert["headers"] == {"operation": "insert"}
    assert insert["key"] == f'"public"."TaskRun"/"{run.id}"'
    assert insert["value"]["status"] == "EXECUTING"
    assert insert["value"]["friendlyId"] == run.id
    assert json.loads(insert["value"]["payload"]) == {"message": "brief"}
    # offset+handle without live: the same snapshot again
    url = feed_url(run.id, offset=r.headers["electric-offset"], handle=f"run-{run.id}")
    again = await api.client.get(url, headers=run.h())
    assert await again.json() == body and "electric-schema" in again.headers


async def test_skip_columns_keeps_reserved_ones(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await fake_run(api)
    url = feed_url(run.id, offset="-1", skipColumns="payload,status,metadata")
    r = await api.client.get(url, headers=run.h())
    value = (await r.json())[0]["value"]
    assert "payload" not in value and "metadata" not in value and value["status"] == "EXECUTING"


async def test_live_poll_wakes_on_row_change_not_on_deltas(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), trigger_poll_s=5.0)
    run = await fake_run(api)
    r, _ = await snapshot(api, run)
    offset = r.headers["electric-offset"]
    poll = asyncio.create_task(live(api, run, offset))
    for i in range(5):
        await run.add("message.delta", {"text": f"w{i} "})
    await asyncio.sleep(0.3)
    assert not poll.done()  # text deltas are stream chunks, not row changes
    started = time.perf_counter()
    await run.add("message.completed", {"message": {"role": "assistant", "content": "x"}})
    await run.add("run.completed", {"output": {"message": "w0 w1"}})
    r2, body = await poll
    assert time.perf_counter() - started < 1.0
    assert "electric-cursor" in r2.headers and "electric-schema" not in r2.headers
    update, control = body
    assert control["headers"]["control"] == "up-to-date"
    assert update["headers"]["operation"] == "update"
    value = update["value"]
    assert value["status"] == "COMPLETED_SUCCESSFULLY"
    assert json.loads(value["output"]) == {"message": "w0 w1"}
    assert NO_Z.match(value["completedAt"])
    assert offset_seq(r2.headers["electric-offset"]) == 9
    stats = api.app[TRIGGER].stats
    assert stats.polls_changed == 1 and stats.polls_idle == 0


async def test_live_poll_times_out_with_the_same_offset(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await fake_run(api)
    r, _ = await snapshot(api, run)
    offset = r.headers["electric-offset"]
    await run.add("message.delta", {"text": "only a delta"})
    started = time.perf_counter()
    r2, body = await live(api, run, offset)
    assert 0.2 < time.perf_counter() - started < 2.0
    assert body == [{"headers": {"control": "up-to-date"}}]
    assert r2.headers["electric-offset"] == offset
    assert r2.headers["electric-handle"] == f"run-{run.id}"
    assert r2.headers["electric-cursor"]


async def test_live_poll_sees_changes_made_before_it_arrived(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), trigger_poll_s=5.0)
    run = await fake_run(api)
    r, _ = await snapshot(api, run)
    await run.add("examples.progress", {"done": 1, "total": 3})
    started = time.perf_counter()
    _, body = await live(api, run, r.headers["electric-offset"])
    assert time.perf_counter() - started < 1.0
    meta = json.loads(body[0]["value"]["metadata"])
    assert meta["progress"] == {"done": 1, "total": 3}


async def test_a_real_turn_through_the_feed(make_api: Any) -> None:
    gate = asyncio.Event()
    # a pace above the coalescing window, so the gate pauses the engine with nothing pending
    engine = ScriptedEngine(words=6, gate=gate, pace_s=0.02)
    api: Api = await make_api(engine=engine, **FAST)
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "go"}, headers=api.h())
    started = await r.json()
    run_id, token = started["runId"], started["publicAccessToken"]
    h = {"Authorization": f"Bearer {token}"}
    url = feed_url(run_id, offset="-1")
    for _ in range(200):
        body = await (await api.client.get(url, headers=h)).json()
        if body[0]["value"]["status"] == "EXECUTING":
            break
        await asyncio.sleep(0.01)
    assert body[0]["value"]["status"] == "EXECUTING"
    assert body[0]["value"]["completedAt"] is None
    gate.set()
    for _ in range(200):
        body = await (await api.client.get(url, headers=h)).json()
        if body[0]["value"]["status"] != "EXECUTING":
            break
        await asyncio.sleep(0.01)
    value = body[0]["value"]
    assert value["status"] == "COMPLETED_SUCCESSFULLY"
    run_doc = await api.app[STORE].get_doc("run", run_id)
    assert run_doc is not None
    assert json.loads(value["output"]) == run_doc.body["output"]
    assert json.loads(value["metadata"])["sessionId"] == session["id"]


# authorisation ----------------------------------------------------------------------------
async def test_tokens_are_checked_on_every_endpoint(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await fake_run(api)
    other = await fake_run(api)
    expired = api.app[RUN_TOKENS].mint(run.id, api.user_a, token_ref=api.ref(), ttl_s=-30)
    unknown = "run_" + uuid.uuid4().hex
    for url in (feed_url(run.id, offset="-1"), f"/realtime/v1/streams/{run.id}/chat"):
        cases = [
            ({}, 401),
            (run.h("not-a-token"), 401),
            (run.h("a.b.c"), 401),
            (run.h(expired), 401),
            (run.h(other.token), 403),
            (run.h(api.token_b), 404),  # another user's API token: the run is not theirs
        ]
        for headers, status in cases:
            r = await api.client.get(url, headers=headers)
            assert r.status == status, (url, headers, await r.text())
            body = await r.json()
            assert set(body["error"]) >= {"code", "message"}
            assert r.headers["Access-Control-Allow-Origin"] == "*"
        owner = await api.client.get(url, headers=run.h(api.token_a))
        assert owner.status == 200
        await owner.content.readuntil(b"\n\n")  # a snapshot, or the stream's first frame
        owner.close()
    r = await api.client.get(
        feed_url(unknown, offset="-1"),
        headers=run.h(api.app[RUN_TOKENS].mint(unknown, "u", token_ref=api.ref())),
    )
    assert r.status == 404
    refused = api.app[TRIGGER].stats.refused
    assert refused == {401: 8, 403: 2}
    metrics = await (await api.client.get("/metrics")).text()
    assert 'sessionstream_trigger_refused_total{status="403"} 2.0' in metrics


async def test_preflight_echoes_requested_headers(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    for path in ("/realtime/v1/runs/run_x", "/realtime/v1/streams/run_x/chat"):
        r = await api.client.options(
            path,
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization,trigger-version,last-event-id",
            },
        )
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "GET" in r.headers["Access-Control-Allow-Methods"]
        assert r.headers["Access-Control-Allow-Headers"] == (
            "authorization,trigger-version,last-event-id"
        )


# the SSE stream ----------------------------------------------------------------------------
async def _finished_run(api: Api, deltas: int = 6) -> FakeRun:
    run = await fake_run(api)
    for i in range(deltas):
        await run.add("message.delta", {"text": f"w{i} "})
    await run.add("run.completed", {"output": {"message": "done"}})
    return run


async def test_stream_replays_the_whole_log_and_ends_cleanly(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await _finished_run(api)
    r = await api.client.get(f"/realtime/v1/streams/{run.id}/chat", headers=run.h())
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/event-stream"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    got = frames(await r.text())  # read() returning at all means a clean end
    events = await api.app[STORE].read_stream(run.stream)
    assert [i for i, _ in got] == [e.version for e in events] == list(range(1, 10))
    assert [f for _, f in got] == [json.loads(json.dumps(chat_stream_event(e))) for e in events]
    assert got[-1][1]["type"] == "run.completed"
    assert api.app[TRIGGER].stats.streams_completed == 1


async def test_stream_resumes_exactly_after_last_event_id(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await _finished_run(api, deltas=4)
    url = f"/realtime/v1/streams/{run.id}/default"  # any key serves the run's stream
    for k in range(8):
        r = await api.client.get(url, headers={**run.h(), "Last-Event-ID": str(k)})
        assert [i for i, _ in frames(await r.text())] == list(range(k + 1, 8)), k
    for bad, status in (("9", 400), ("1736950000000-0", 400)):
        r = await api.client.get(url, headers={**run.h(), "Last-Event-ID": bad})
        assert r.status == status


async def test_live_stream_pings_then_ends_after_the_terminal_event(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await fake_run(api)
    r = await api.client.get(f"/realtime/v1/streams/{run.id}/chat", headers=run.h())
    assert r.status == 200
    first = await r.content.readuntil(b"\n\n")
    assert first.startswith(b"id: 1\n")
    await r.content.readuntil(b"\n\n")  # run.started
    assert (await r.content.readuntil(b"\n\n")).startswith(b': ping {"type":"heartbeat"')
    await run.add("message.delta", {"text": "hello"})
    delta = await r.content.readuntil(b"\n\n")
    assert frames(delta.decode())[0][1]["data"] == {"text": "hello"}
    await run.add("run.canceled", {"reason": "by owner"})
    rest = frames((await r.read()).decode())  # the body ends: the run is over
    assert [f["type"] for _, f in rest] == ["run.canceled"]


async def test_stream_start_latest_skips_history(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await fake_run(api)
    await run.add("message.delta", {"text": "old"})
    r = await api.client.get(
        f"/realtime/v1/streams/{run.id}/chat",
        headers={**run.h(), "X-Trigger-Stream-Start": "latest"},
    )
    await asyncio.sleep(0.05)
    await run.add("run.completed", {"output": {}})
    assert [i for i, _ in frames(await r.text())] == [4]


async def test_timeout_seconds_drops_the_connection_instead_of_ending_it(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await fake_run(api)
    started = time.perf_counter()
    r = await api.client.get(
        f"/realtime/v1/streams/{run.id}/chat", headers={**run.h(), "Timeout-Seconds": "1"}
    )
    with pytest.raises(aiohttp.ClientPayloadError):
        await r.read()  # not a clean end: the SDK reconnects with Last-Event-ID
    assert 0.9 < time.perf_counter() - started < 3.0
    assert api.app[TRIGGER].stats.streams_dropped == 1


async def test_shutdown_releases_held_requests_at_once(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), trigger_poll_s=30.0, trigger_ping_s=30.0)
    run = await fake_run(api)
    snap, _ = await snapshot(api, run)
    r = await api.client.get(f"/realtime/v1/streams/{run.id}/chat", headers=run.h())
    await r.content.readuntil(b"\n\n")
    poll = asyncio.create_task(live(api, run, snap.headers["electric-offset"]))
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    await api.app[REALTIME].shutdown(api.app)
    _, body = await poll
    assert body == [{"headers": {"control": "up-to-date"}}]
    with pytest.raises(aiohttp.ClientPayloadError):
        await r.read()
    assert time.perf_counter() - started < 2.0


async def test_connections_per_user_are_bounded(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST, max_connections_per_user=1)
    run = await fake_run(api)
    first = await api.client.get(f"/realtime/v1/streams/{run.id}/chat", headers=run.h())
    assert first.status == 200
    second = await api.client.get(f"/realtime/v1/streams/{run.id}/chat", headers=run.h())
    assert second.status == 429 and "Retry-After" in second.headers
    await run.add("run.completed", {"output": {}})
    await first.read()
    third = await api.client.get(f"/realtime/v1/streams/{run.id}/chat", headers=run.h())
    assert third.status == 200
    await third.read()
