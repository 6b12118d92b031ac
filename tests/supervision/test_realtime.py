"""Realtime delivery's tasks, heartbeats, and the clients that leave a stalled node."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from sessionstream.eventstore.model import NewEvent, RecordedEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from tests.supervision.helpers import Always, Once, append_some, crash_logged, next_heartbeat


# realtime: the fanout per run, the websocket sender, the revocation sweep -----------------------
def _realtime_helpers() -> Any:
    from tests import test_realtime

    return test_realtime


async def test_a_fanout_that_crashes_hands_its_subscribers_back_without_a_gap(
    make_api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sessionstream.server.fanout import Fanout
    from sessionstream.server.keys import STORE
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    api = await make_api(engine=ScriptedEngine(words=80, pace_s=0.004))
    once = Once(Fanout._deliver, nth=3)

    def deliver(fanout: Fanout, event: RecordedEvent, end: tuple[int, str] | None) -> None:
        once(fanout, event, end)

    monkeypatch.setattr(Fanout, "_deliver", deliver)
    turn = await rt.start_turn(api)
    path = f"/api/realtime/runs/{turn.run_id}"
    results = await asyncio.gather(
        *(rt.collect(api, path, protocols=rt.bearer(turn.token)) for _ in range(3))
    )
    stored = await api.app[STORE].read_stream(f"run-{turn.run_id}")
    assert api.app[STORE].supervisor.crashes["fanout"] == 1
    for frames, code, _reason in results:
        assert code == 1000
        assert [f["seq"] for f in frames] == [e.version for e in stored]
    crash_logged(caplog, "fanout")


async def test_a_websocket_sender_that_crashes_closes_1011_and_the_client_resumes(
    make_api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sessionstream.server import websocket
    from sessionstream.server.keys import STORE
    from sessionstream.server.tail import Connection
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    gate = asyncio.Event()
    api = await make_api(engine=ScriptedEngine(words=40, pace_s=0.002, gate=gate))
    real = websocket._send_own
    crashes = 0

    async def send_own(realtime: Any, conn: Connection, transport: asyncio.Transport) -> Any:
        nonlocal crashes
        end = await real(realtime, conn, transport)
        if crashes == 0:  # sent what it had, joined the fanout: then the sender dies
            crashes += 1
            raise RuntimeError("injected: the sender broke")
        return end

    monkeypatch.setattr(websocket, "_send_own", send_own)
    turn = await rt.start_turn(api)
    path = f"/api/realtime/runs/{turn.run_id}"
    first = asyncio.create_task(rt.collect(api, path, protocols=rt.bearer(turn.token)))
    await asyncio.sleep(0.3)
    gate.set()
    frames, code, _ = await first
    assert code == 1011 and crashes == 1
    after = frames[-1]["seq"] if frames else 0
    rest, code, _ = await rt.collect(api, f"{path}?after={after}", protocols=rt.bearer(turn.token))
    assert code == 1000
    stored = await api.app[STORE].read_stream(f"run-{turn.run_id}")
    assert [f["seq"] for f in frames + rest] == [e.version for e in stored]
    assert api.app[STORE].supervisor.crashes["ws-sender"] == 1
    crash_logged(caplog, "ws-sender")


async def test_the_revocation_sweep_restarts_and_still_closes_a_revoked_channel(
    make_api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    import aiohttp

    from sessionstream.server.keys import STORE
    from sessionstream.server.revocation import Revocations
    from sessionstream.services.accounts import revoke_token
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    api = await make_api(engine=ScriptedEngine(words=10), token_cache_s=1.0)
    store = api.app[STORE]
    once = Once(Revocations.sweep)

    async def sweep(revocations: Revocations) -> int:
        result: int = await once(revocations)
        return result

    monkeypatch.setattr(Revocations, "sweep", sweep)
    mine, theirs = await api.session(), await api.session(api.token_b)
    channel = "/api/realtime/sessions/{}"
    async with (
        api.client.ws_connect(channel.format(mine["id"]), headers=api.h()) as revoked,
        api.client.ws_connect(channel.format(theirs["id"]), headers=api.h(api.token_b)) as kept,
    ):
        await revoke_token(store, api.token_a)
        turn = await rt.start_turn(api, theirs["id"], api.token_b)
        got: list[dict[str, Any]] = []
        while not got or got[-1]["type"] != "run.released":
            message = await kept.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.TEXT
            got.append(json.loads(message.data))
        deadline = time.monotonic() + 10
        message = await revoked.receive(timeout=10)
        while message.type == aiohttp.WSMsgType.TEXT:  # its session's own frames first
            assert time.monotonic() < deadline
            message = await revoked.receive(timeout=10)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4401
    assert once.calls >= 2 and store.supervisor.crashes["revocation-sweep"] == 1
    stored = await store.read_all(0, keys=frozenset({f"session-{theirs['id']}"}))
    assert [f["position"] for f in got] == [e.position for e in stored]
    assert any(f["runId"] == turn.run_id for f in got)
    crash_logged(caplog, "revocation-sweep")


# heartbeats: a subscriber tells "no events" from "no delivery" ----------------------------------
async def test_every_wire_carries_the_nodes_delivery_position_in_its_heartbeat(
    make_api: Any,
) -> None:
    from sessionstream.server.keys import STORE
    from sessionstream.server.realtime import REALTIME
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    api = await make_api(engine=ScriptedEngine(words=5), delivery_heartbeat_s=0.05, sse_ping_s=0.05)
    store = api.app[STORE]
    session = await api.session()
    async with api.client.ws_connect(
        f"/api/realtime/sessions/{session['id']}", headers=api.h()
    ) as ws:
        beat = await next_heartbeat(ws)
        assert set(beat) == {"type", "delivered", "head", "stalled", "at"}  # no seq, position
        assert beat["delivered"] == beat["head"] == store.hub.published_position
        assert beat["stalled"] is False
        turn = await rt.start_turn(api, session["id"])
        await rt.wait_idle(api, session["id"])
        head = store.hub.published_position
        later = await next_heartbeat(ws)
        while later["delivered"] < head:  # beats sent while the turn ran were still queued
            later = await next_heartbeat(ws)
        assert later["delivered"] == later["head"] == head > beat["delivered"]
    assert api.app[REALTIME].heartbeats.sent >= 2

    # SSE: the keep-alive comment is followed by a heartbeat event without an id
    r = await api.client.get(
        f"/api/realtime/sessions/{session['id']}?after={store.hub.published_position}",
        headers={**rt.SSE, **api.h()},
    )
    block = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
    r.close()
    lines = block.decode().splitlines()
    assert lines[0] == ": ping" and lines[1] == "event: heartbeat"
    assert not any(line.startswith("id:") for line in lines)
    assert '"delivered":' in lines[2] and lines[2].startswith("data: {")

    # Trigger.dev: only inside the comment its SDK ignores
    r = await api.client.get(
        f"/realtime/v1/streams/{turn.run_id}/chat",
        headers={"Authorization": f"Bearer {turn.token}", "Last-Event-ID": "1"},
    )
    assert r.status == 200
    r.close()


@pytest.mark.postgres
async def test_a_heartbeat_says_stalled_when_the_pump_is_down_and_the_head_moved_on(
    pg_schema: str, make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionstream.server.keys import STORE
    from tests.conftest import Api
    from tests.pg import url_with_schema

    api: Api = await make_api(database_url=url_with_schema(pg_schema), delivery_heartbeat_s=0.05)
    store = api.app[STORE]
    session = await api.session()
    async with api.client.ws_connect(
        f"/api/realtime/sessions/{session['id']}", headers=api.h()
    ) as ws:
        beat = await next_heartbeat(ws)
        assert beat["stalled"] is False and beat["delivered"] == beat["head"]
        monkeypatch.setattr(store.pump, "drain", Always())  # type: ignore[attr-defined]
        await store.append("s-4", [NewEvent("thing.happened", {})])
        beat = await next_heartbeat(ws)
        while not beat["stalled"]:
            beat = await next_heartbeat(ws)
        assert beat["head"] > beat["delivered"]
        monkeypatch.undo()  # the pump comes back: delivery catches up, the stall ends
        while beat["stalled"] or beat["delivered"] < beat["head"]:
            beat = await next_heartbeat(ws)


async def test_the_heartbeat_task_restarts_and_beats_again(
    make_api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    from sessionstream.server.heartbeat import Heartbeats
    from sessionstream.server.keys import STORE
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    once = Once(Heartbeats.beat)

    def beat(heartbeats: Heartbeats) -> int:
        result: int = once(heartbeats)
        return result

    monkeypatch.setattr(Heartbeats, "beat", beat)
    api = await make_api(engine=ScriptedEngine(words=5), delivery_heartbeat_s=0.05)
    store = api.app[STORE]
    session = await api.session()
    after = store.hub.published_position
    events: list[dict[str, Any]] = []
    async with api.client.ws_connect(
        f"/api/realtime/sessions/{session['id']}?after={after}", headers=api.h()
    ) as ws:
        await rt.start_turn(api, session["id"])
        await rt.wait_idle(api, session["id"])
        head = store.hub.published_position
        while True:  # every event, then a heartbeat that has delivered them all
            message = await ws.receive(timeout=10)
            frame = json.loads(message.data)
            if frame["type"] != "heartbeat":
                events.append(frame)
            elif frame["delivered"] >= head:
                break
    assert once.calls >= 2 and store.supervisor.crashes["heartbeat"] == 1
    stored = await store.read_all(after, keys=frozenset({f"session-{session['id']}"}))
    assert [f["position"] for f in events] == [e.position for e in stored]
    crash_logged(caplog, "heartbeat")


async def test_a_token_expiry_timer_that_raises_is_retried_and_still_closes_4401(
    make_api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sessionstream.server.keys import RUN_TOKENS, STORE
    from sessionstream.server.tail import Connection
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    gate = asyncio.Event()
    api = await make_api(engine=ScriptedEngine(words=10, gate=gate))
    real_stop = Connection.stop
    once = Once(real_stop)  # the expiry's stop raises once; every other stop is real

    def stop(conn: Connection, code: int, reason: str) -> None:
        (once if code == 4401 else real_stop)(conn, code, reason)

    monkeypatch.setattr(Connection, "stop", stop)
    turn = await rt.start_turn(api)
    short = api.app[RUN_TOKENS].mint(turn.run_id, api.user_a, token_ref=api.ref(), ttl_s=1)
    path = f"/api/realtime/runs/{turn.run_id}"
    owner = asyncio.create_task(rt.collect(api, path, headers=api.h()))
    frames, code, _ = await rt.collect(api, f"{path}?token={short}")
    assert code == 4401 and once.calls == 2
    assert api.app[STORE].supervisor.crashes["token-expiry"] == 1
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    gate.set()
    everything, code, _ = await owner
    assert code == 1000
    stored = await api.app[STORE].read_stream(f"run-{turn.run_id}")
    assert [f["seq"] for f in everything] == [e.version for e in stored]
    crash_logged(caplog, "token-expiry")


# the browser module reconnects when the node stalls ---------------------------------------------
STALL_SCRIPT = """
const sockets = [];
class FakeSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.closed = null;
    sockets.push(this);
    queueMicrotask(() => { this.readyState = 1; if (this.onopen) this.onopen(); });
  }
  close(code, reason) { this.closed = [code, reason]; this.readyState = 3; }
  frame(value) { this.onmessage({ data: JSON.stringify(value) }); }
}
globalThis.WebSocket = FakeSocket;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const m = await import(process.argv[1]);
const events = [], states = [], beats = [];
const sub = m.subscribeSession({
  baseUrl: 'http://node.test', sessionId: 's', apiToken: 't', stallMs: 60,
  backoff: { baseMs: 1, capMs: 2 },
  onEvent: (frame) => events.push(frame.position),
  onState: (state, detail) => states.push([state, detail ? detail.reason || null : null]),
  onHeartbeat: (frame) => beats.push(frame.delivered),
});
await sleep(5);
sockets[0].frame({ type: 'thing', position: 1 });
sockets[0].frame({ type: 'heartbeat', delivered: 1, head: 1, stalled: false, at: 'x' });
sockets[0].frame({ type: 'heartbeat', delivered: 1, head: 5, stalled: true, at: 'x' });
await sleep(20);
sockets[1].frame({ type: 'thing', position: 1 });
sockets[1].frame({ type: 'thing', position: 2 });
sockets[1].frame({ type: 'heartbeat', delivered: 2, head: 2, stalled: false, at: 'x' });
await sleep(200);
sub.close();
console.log(JSON.stringify({ events, states, beats,
  urls: sockets.map((s) => s.url), closes: sockets.map((s) => s.closed) }));
"""


@pytest.mark.node
def test_the_browser_module_leaves_a_stalled_node_and_resumes_exactly_once() -> None:
    import json
    import shutil
    import subprocess

    from tests.conftest import ON_CI

    node = shutil.which("node")
    if node is None:
        if ON_CI:
            pytest.fail("node is required on CI")
        pytest.skip("node is not installed")
    module = Path(__file__).parents[2] / "server" / "static" / "sessionstream.js"
    done = subprocess.run(
        [node, "--input-type=module", "-e", STALL_SCRIPT, module.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(done.stdout)
    assert out["events"] == [1, 2]  # the duplicate after the resume is dropped
    assert out["beats"] == [1, 1, 2]
    # a stalled heartbeat: left at once, resumed after the last position
    assert out["closes"][0] == [1000, "stalled"]
    assert "after=1" in out["urls"][1]
    # heartbeats then silence longer than stallMs: left again, resumed after 2
    assert out["closes"][1] == [1000, "stalled"]
    assert "after=2" in out["urls"][2]
    assert len(out["urls"]) == 3  # no heartbeat yet on the third: never judged by them
    reasons = [reason for state, reason in out["states"] if state == "reconnecting"]
    assert reasons[:2] == ["stalled", "stalled"]
    assert out["states"][-1] == ["closed", None]


async def test_a_commit_not_yet_published_is_not_a_stall_until_it_stays_unpublished(
    sqlite_store: SQLiteEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionstream.server.heartbeat import Heartbeats
    from sessionstream.server.realtime_stats import RealtimeStats
    from sessionstream.server.tail import Tails

    store = sqlite_store
    await append_some(store, 2)
    beats = Heartbeats(store, Tails(store, RealtimeStats()), interval_s=0.1)
    assert beats.state()["stalled"] is False
    published = store.hub.published_position
    monkeypatch.setattr(store, "known_head", lambda: published + 1)  # NOTIFY came first
    fresh = beats.state()
    assert fresh["head"] == published + 1 and fresh["stalled"] is False
    await asyncio.sleep(0.12)
    assert beats.state()["stalled"] is True  # still unpublished an interval later
    await append_some(store, 1)  # delivery moves: no longer a stall
    monkeypatch.setattr(store, "known_head", lambda: store.hub.published_position)
    assert beats.state()["stalled"] is False


async def test_the_python_client_leaves_a_stalled_node_and_resumes_exactly_once(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionstream.client import Backoff, stream_run
    from sessionstream.server.heartbeat import Heartbeats
    from sessionstream.server.keys import STORE
    from sessionstream.server.realtime import REALTIME_STATS
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    real = Heartbeats.state
    stalls = 0

    def state(heartbeats: Heartbeats) -> dict[str, Any]:
        nonlocal stalls
        out = real(heartbeats)
        if stalls == 0 and out["delivered"] > 0:  # one beat says the node is stalled
            stalls += 1
            out["stalled"] = True
        return out

    monkeypatch.setattr(Heartbeats, "state", state)
    api = await make_api(engine=ScriptedEngine(words=60, pace_s=0.01), delivery_heartbeat_s=0.05)
    turn = await rt.start_turn(api)
    base = str(api.client.make_url("")).rstrip("/")
    frames = [
        frame
        async for frame in stream_run(
            base, turn.run_id, turn.token, backoff=Backoff(base_s=0.01, cap_s=0.02)
        )
    ]
    stored = await api.app[STORE].read_stream(f"run-{turn.run_id}")
    assert [f["seq"] for f in frames] == [e.version for e in stored]
    assert stalls == 1
    assert sum(api.app[REALTIME_STATS].opened.values()) == 2  # it left and came back
