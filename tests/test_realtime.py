"""Realtime channels: frames, auth refusals (websocket and SSE), limits, slow consumers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest

from sessionstream.core.vocabulary import TERMINAL
from sessionstream.server.auth import credential
from sessionstream.server.frames import chat_stream_event, compact_frame
from sessionstream.server.keys import RUN_TOKENS, STORE
from sessionstream.server.realtime import REALTIME, REALTIME_STATS
from sessionstream.server.websocket import SUBPROTOCOL
from tests.conftest import Api
from tests.scripted_engine import ScriptedEngine

S = "/api/campaigns/ai-chat-sessions"
SSE = {"Accept": "text/event-stream"}


# helpers (also used by test_realtime_resume.py) -----------------------------------------------
@dataclass
class Turn:
    session_id: str
    run_id: str
    token: str


async def start_turn(api: Api, session_id: str | None = None, token: str | None = None) -> Turn:
    sid = session_id or (await api.session(token))["id"]
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "go"}, headers=api.h(token))
    assert r.status == 200, await r.text()
    body = await r.json()
    return Turn(sid, body["runId"], body["publicAccessToken"])


async def wait_idle(api: Api, sid: str, token: str | None = None) -> dict[str, Any]:
    for _ in range(1000):
        r = await api.client.get(f"{S}/{sid}", headers=api.h(token))
        row: dict[str, Any] = (await r.json())["session"]
        if row["task_status"] is None:
            return row
        await asyncio.sleep(0.01)
    raise AssertionError("session stayed busy")


def bearer(token: str) -> list[str]:
    return [SUBPROTOCOL, f"bearer.{token}"]


async def collect(
    api: Api, path: str, *, limit: int = 100_000, **kwargs: Any
) -> tuple[list[dict[str, Any]], int | None, str]:
    """Frames of one connection until the server closes it (or ``limit`` frames)."""
    kwargs.setdefault("max_msg_size", 0)
    frames: list[dict[str, Any]] = []
    reason = ""
    code: int | None = None
    async with api.client.ws_connect(path, **kwargs) as ws:
        while True:
            message = await ws.receive(timeout=20)
            if message.type == aiohttp.WSMsgType.TEXT:
                frames.append(json.loads(message.data))
                if len(frames) >= limit:
                    break
                continue
            if message.type == aiohttp.WSMsgType.CLOSE:
                # the code the server sent is in the frame; ws.close_code can read
                # 1006 when the server drops the TCP connection before our reply
                code, reason = int(message.data), str(message.extra or "")
            break
        return frames, code if code is not None else ws.close_code, reason


async def close_of(api: Api, path: str, **kwargs: Any) -> tuple[int | None, list[dict[str, Any]]]:
    frames, code, _ = await collect(api, path, **kwargs)
    return code, frames


def sse_events(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                fields.setdefault("comment", line)
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if fields:
            events.append(fields)
    return events


# frames ----------------------------------------------------------------------------------------
async def test_run_channel_sends_every_event_then_closes_1000(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=40, pace_s=0.002))
    turn = await start_turn(api)
    frames, code, reason = await collect(
        api, f"/api/realtime/runs/{turn.run_id}", protocols=bearer(turn.token)
    )
    assert code == 1000 and reason == "run finished"
    stored = await api.app[STORE].read_stream(f"run-{turn.run_id}")
    assert frames == [chat_stream_event(e) for e in stored]  # exactly the frame builder's JSON
    assert [f["seq"] for f in frames] == list(range(1, len(stored) + 1))
    assert frames[-1]["type"] == "run.completed" and frames[0]["type"] == "run.created"
    assert all(f["runId"] == turn.run_id and f["sessionId"] == turn.session_id for f in frames)
    # a finished run replays in full, with the API token too, and ?token= works
    again, code, _ = await collect(api, f"/api/realtime/runs/{turn.run_id}", headers=api.h())
    assert again == frames and code == 1000
    again, code, _ = await collect(api, f"/api/realtime/runs/{turn.run_id}?token={turn.token}")
    assert again == frames
    # resuming after the terminal event: nothing to send, the same normal close
    tail, code, reason = await collect(
        api, f"/api/realtime/runs/{turn.run_id}?after={len(stored)}", headers=api.h()
    )
    assert tail == [] and code == 1000 and reason == "run finished"
    middle, _, _ = await collect(api, f"/api/realtime/runs/{turn.run_id}?after=5", headers=api.h())
    assert middle == frames[5:]


async def test_subprotocol_is_selected_only_when_offered(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=3))
    turn = await start_turn(api)
    await wait_idle(api, turn.session_id)
    path = f"/api/realtime/runs/{turn.run_id}"
    async with api.client.ws_connect(path, protocols=bearer(turn.token)) as ws:
        assert ws.protocol == SUBPROTOCOL
    async with api.client.ws_connect(path, headers=api.h()) as ws:
        assert ws.protocol is None
        assert (await ws.receive()).type == aiohttp.WSMsgType.TEXT


async def test_session_channel_carries_session_and_run_events(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=20))
    turn = await start_turn(api)
    await wait_idle(api, turn.session_id)
    path = f"/api/realtime/sessions/{turn.session_id}"
    keys = frozenset({f"session-{turn.session_id}"})
    expected = await api.app[STORE].read_all(0, keys=keys)
    async with api.client.ws_connect(path, protocols=bearer(api.token_a)) as ws:
        frames = [json.loads((await ws.receive(timeout=5)).data) for _ in expected]
        # live: a patch made now arrives on the open channel
        r = await api.client.patch(f"{S}/{turn.session_id}", json={"title": "t"}, headers=api.h())
        assert r.status == 200
        patched = json.loads((await ws.receive(timeout=5)).data)
    positions = [f["position"] for f in frames] + [patched["position"]]
    assert positions == sorted(set(positions))
    assert frames == [chat_stream_event(e) for e in expected]
    assert {f["runId"] for f in frames} == {None, turn.run_id}
    assert patched["type"] == "session.patched"
    # resumable by global position
    resumed, _, _ = await collect(
        api, f"{path}?after={frames[3]['position']}", limit=3, headers=api.h()
    )
    assert resumed == frames[4:7]


async def test_sse_run_stream_with_resume_and_ping(make_api: Any) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(words=30, gate=gate), sse_ping_s=0.05)
    turn = await start_turn(api)
    url = f"/api/realtime/runs/{turn.run_id}"
    headers = {**SSE, "Authorization": f"Bearer {turn.token}"}
    r = await api.client.get(url, headers=headers)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    body = b""
    while b": ping" not in body:  # the run is paused at the gate: keepalives flow
        body += await asyncio.wait_for(r.content.readany(), 5)
    gate.set()
    body += await asyncio.wait_for(r.content.read(), 10)  # ends after the terminal event
    events = [e for e in sse_events(body.decode()) if "id" in e]
    stored = await api.app[STORE].read_stream(f"run-{turn.run_id}")
    assert [int(e["id"]) for e in events] == [e.version for e in stored]
    assert [e["event"] for e in events] == [e.type for e in stored]
    assert [json.loads(e["data"]) for e in events] == [chat_stream_event(e) for e in stored]
    # Last-Event-ID resumes exactly after it (and wins over after=)
    r = await api.client.get(f"{url}?after=1", headers={**headers, "Last-Event-ID": "4"})
    resumed = [e for e in sse_events(await r.text()) if "id" in e]
    assert [int(e["id"]) for e in resumed] == [e.version for e in stored[4:]]
    # a reconnect after the terminal event is told to stop (EventSource obeys 204)
    last = str(stored[-1].version)
    r = await api.client.get(url, headers={**headers, "Last-Event-ID": last})
    assert r.status == 204
    # the API token and ?token= work too; compact start over SSE
    r = await api.client.get(f"{url}?compact=1&token={turn.token}", headers=SSE)
    compact = [e for e in sse_events(await r.text()) if "id" in e]
    assert [e["event"] for e in compact] == ["message.snapshot", "run.completed"]
    r = await api.client.get(
        f"/api/realtime/sessions/{turn.session_id}?after=0", headers={**SSE, **api.h()}
    )
    assert r.status == 200
    first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
    assert first.startswith(b"id: ")
    r.close()


def test_pure_helpers() -> None:
    assert credential("Bearer abc", [], None) == "abc"
    assert credential(None, [SUBPROTOCOL, "bearer.xyz"], "q") == "xyz"
    assert credential(None, ["a.b.c"], None) == "a.b.c"  # a bare JWT as the protocol
    assert credential(None, [SUBPROTOCOL], "q") == "q"
    assert credential("Basic x", [], None) is None
    assert compact_frame([]) is None


# auth refusals ---------------------------------------------------------------------------------
@pytest.fixture
async def two_runs(make_api: Any) -> tuple[Api, Turn, Turn]:
    api: Api = await make_api(engine=ScriptedEngine(words=5))
    a = await start_turn(api)
    b = await start_turn(api, token=api.token_b)
    await wait_idle(api, a.session_id)
    await wait_idle(api, b.session_id, api.token_b)
    return api, a, b


def forged(token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, "someone-elses-secret-0123456789abcdef", algorithm="HS256")


async def test_every_refusal_over_websocket_sse_and_http(two_runs: tuple[Api, Turn, Turn]) -> None:
    api, a, b = two_runs
    expired = api.app[RUN_TOKENS].mint(a.run_id, api.user_a, token_ref=api.ref(), ttl_s=-10)
    run = f"/api/realtime/runs/{a.run_id}"
    sess = f"/api/realtime/sessions/{a.session_id}"
    cases = [
        ("no token", run, None, 401),
        ("bad signature", run, forged(a.token), 401),
        ("garbage", run, "not-a-token", 401),
        ("expired", run, expired, 401),
        ("another run's token", run, b.token, 403),
        ("another user's API token", run, api.token_b, 404),
        ("unknown API token", run, "sst_" + "x" * 43, 401),
        ("unknown run", f"/api/realtime/runs/run_{uuid.uuid4().hex}", api.token_a, 404),
        ("malformed run id", "/api/realtime/runs/nope", api.token_a, 404),
        ("session: no token", sess, None, 401),
        ("session: a run token", sess, a.token, 401),
        ("session: another user", sess, api.token_b, 404),
        ("session: unknown", f"/api/realtime/sessions/{uuid.uuid4()}", api.token_a, 404),
        ("session: bad cursor", f"{sess}?after=-3", api.token_a, 400),
        ("run: bad cursor", f"{run}?after=x", api.token_a, 400),
    ]
    for why, path, token, status in cases:
        # websocket, token as a subprotocol: accepted, then closed with 4000 + status
        protocols = bearer(token) if token else [SUBPROTOCOL]
        code, frames = await close_of(api, path, protocols=protocols)
        assert (code, frames) == (4000 + status, []), (why, code)
        # websocket, token in the query and in the Authorization header
        sep = "&" if "?" in path else "?"
        query = f"{path}{sep}token={token}" if token else path
        assert (await close_of(api, query))[0] == 4000 + status, why
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        assert (await close_of(api, path, headers=headers))[0] == 4000 + status, why
        # SSE and plain HTTP: the JSON error before anything is streamed
        for accept in (SSE, {}):
            r = await api.client.get(path, headers={**headers, **accept})
            assert r.status == status, (why, accept, r.status)
            assert (await r.json())["error"]["code"]
    stats = api.app[REALTIME_STATS]
    assert stats.refused[401] >= 6 and stats.refused[403] >= 1 and stats.refused[404] >= 4
    assert stats.connections == 0
    # accepted credentials on a plain GET: told to upgrade
    r = await api.client.get(run, headers=api.h())
    assert r.status == 426 and (await r.json())["error"]["code"] == "upgrade_required"


async def test_run_token_expiring_mid_stream_closes_4401(make_api: Any) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(words=10, gate=gate))
    turn = await start_turn(api)
    short = api.app[RUN_TOKENS].mint(turn.run_id, api.user_a, token_ref=api.ref(), ttl_s=1)
    started = time.monotonic()
    frames, code, _ = await collect(api, f"/api/realtime/runs/{turn.run_id}?token={short}")
    assert code == 4401 and 0 < len(frames) and time.monotonic() - started < 5
    gate.set()
    await wait_idle(api, turn.session_id)


# resync ------------------------------------------------------------------------------------------
async def test_cursor_beyond_head_gets_resync_then_4409(two_runs: tuple[Api, Turn, Turn]) -> None:
    api, a, _ = two_runs
    head = len(await api.app[STORE].read_stream(f"run-{a.run_id}"))
    frames, code, _ = await collect(
        api, f"/api/realtime/runs/{a.run_id}?after={head + 1}", protocols=bearer(a.token)
    )
    assert code == 4409 and len(frames) == 1
    assert frames[0]["type"] == "resync" and frames[0]["head"] == head and frames[0]["reason"]
    r = await api.client.get(
        f"/api/realtime/runs/{a.run_id}", headers={**SSE, **api.h(), "Last-Event-ID": "999"}
    )
    error = (await r.json())["error"]
    assert r.status == 409 and error["code"] == "resync" and error["details"]["head"] == head
    log_head = await api.app[STORE].head_position()
    frames, code, _ = await collect(
        api, f"/api/realtime/sessions/{a.session_id}?after={log_head + 50}", headers=api.h()
    )
    assert code == 4409 and frames == [
        {"type": "resync", "reason": frames[0]["reason"], "head": log_head}
    ]
    assert api.app[REALTIME_STATS].resyncs == 3


# limits ------------------------------------------------------------------------------------------
async def test_connection_limits_per_user_and_per_process(make_api: Any) -> None:
    api: Api = await make_api(
        engine=ScriptedEngine(words=3), max_connections_per_user=2, max_connections=3
    )
    a = (await api.session())["id"]
    b = (await api.session(api.token_b))["id"]
    stats = api.app[REALTIME_STATS]
    held = [
        await api.client.ws_connect(f"/api/realtime/sessions/{a}", headers=api.h()),
        await api.client.ws_connect(f"/api/realtime/sessions/{a}", headers=api.h()),
    ]
    for ws in held:
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT
    assert stats.connections == 2 and stats.by_user == {api.user_a: 2}
    # a third for the same user: refused, as a close code and as an HTTP 429
    code, _ = await close_of(api, f"/api/realtime/sessions/{a}", headers=api.h())
    assert code == 4429
    r = await api.client.get(f"/api/realtime/sessions/{a}", headers={**SSE, **api.h()})
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    assert (await r.json())["error"]["code"] == "too_many_connections"
    # another user may open one more, then the process is full for everyone
    other = await api.client.ws_connect(f"/api/realtime/sessions/{b}", headers=api.h(api.token_b))
    assert (await other.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT
    code, _ = await close_of(api, f"/api/realtime/sessions/{b}", headers=api.h(api.token_b))
    assert code == 4429
    assert stats.connections == 3 and stats.closes[4429] == 2
    for ws in [*held, other]:
        await ws.close()
    for _ in range(100):
        if stats.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert stats.connections == 0 and stats.by_user == {}
    code, frames = await close_of(api, f"/api/realtime/sessions/{a}", headers=api.h(), limit=1)
    assert frames  # room again
    r = await api.client.get("/metrics")
    if r.status == 200:
        text = await r.text()
        assert "sessionstream_realtime_connections" in text
        assert 'sessionstream_realtime_closes_total{code="4429"} 2.0' in text


async def test_shutdown_closes_channels_with_1001(make_api: Any) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(words=40, pace_s=0.005, gate=gate))
    turn = await start_turn(api)
    realtime, stats = api.app[REALTIME], api.app[REALTIME_STATS]
    # one subscriber per path: a caught-up member of the run's fanout, and one on its own
    member = await api.client.ws_connect(f"/api/realtime/runs/{turn.run_id}", headers=api.h())
    while stats.joined == 0:
        assert (await member.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT
    path = f"/api/realtime/sessions/{turn.session_id}"
    alone = await api.client.ws_connect(path, headers=api.h())
    assert (await alone.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT
    await realtime.shutdown(api.app)
    for ws in (member, alone):
        while (message := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
            pass
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 1001
    for _ in range(200):  # the handlers finish their close handshakes
        if stats.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert realtime.fanouts == {} and stats.connections == 0
    code, _ = await close_of(api, path, headers=api.h())
    assert code == 1001  # new channels are turned away while shutting down
    gate.set()
    await wait_idle(api, turn.session_id)


# slow consumers ----------------------------------------------------------------------------------
#: the longest a run's breather waits for a reader to catch up (a bound for a failing
#: test, not a pace: a passing one resumes as soon as the reader is live again)
BREATHER_S = 60.0


class BigWords(ScriptedEngine):
    """Words of ``size`` characters: a run of several megabytes in a fraction of a second."""

    def __init__(
        self,
        words: int,
        size: int,
        gate: asyncio.Event,
        pause_after: int = -1,
        resume: asyncio.Event | None = None,
    ) -> None:
        super().__init__(words, gate=gate)
        self.size = size
        self.pause_after = pause_after  # a breather in the middle, to let readers catch up
        self.resume = resume  # ends the breather (at the latest after BREATHER_S)

    async def turn(self, inp: Any) -> Any:
        from sessionstream.engines.base import TextDelta

        assert self.gate is not None
        await self.gate.wait()
        for i in range(self.words):
            yield TextDelta(f"{i:06d}" + "x" * (self.size - 7) + " ")
            if i == self.pause_after and self.resume is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.resume.wait(), BREATHER_S)
            await asyncio.sleep(0)


async def stalled_client(port: int, path: str) -> socket.socket:
    """A websocket client that completes the handshake and then never reads."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)  # byte by byte: leave the frames unread
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_client_that_never_reads_is_bounded_and_harms_no_one(make_api: Any) -> None:
    gate = asyncio.Event()
    max_queue = 8
    api: Api = await make_api(
        # more than the kernel's socket buffers (up to 4 MB) can absorb, one event a word
        engine=BigWords(words=700, size=16_000, gate=gate),
        delta_coalesce_ms=0.0,
        subscriber_queue=max_queue,
        ws_send_timeout_s=1.0,
        ws_close_timeout_s=0.5,
    )
    turn = await start_turn(api)
    path = f"/api/realtime/runs/{turn.run_id}?token={turn.token}"
    stalled = await stalled_client(api.client.port or 0, path)
    try:
        await _race_stalled_and_fast(api, path, gate, max_queue)
    finally:
        stalled.close()


async def _race_stalled_and_fast(api: Api, path: str, gate: asyncio.Event, max_queue: int) -> None:
    store, stats = api.app[STORE], api.app[REALTIME_STATS]
    deepest = 0
    lagged = False
    sampling = True

    async def sample() -> None:
        nonlocal deepest, lagged
        while sampling:
            for listeners in store.hub._by_key.values():
                for listener in listeners:
                    deepest = max(deepest, len(listener.buffer))
                    lagged = lagged or listener.lagged
            await asyncio.sleep(0.001)

    sampler = asyncio.create_task(sample())
    gaps: list[float] = []
    received: list[dict[str, Any]] = []
    async with api.client.ws_connect(path, max_msg_size=0) as fast:
        assert (await fast.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT  # run.created
        gate.set()
        last = time.monotonic()
        async for message in fast:
            now = time.monotonic()
            received.append(json.loads(message.data))
            if received[-1]["type"] == "message.delta":  # the engine's pace, no big folds
                gaps.append(now - last)
            last = now
    assert received[-1]["type"] in TERMINAL
    assert max(gaps) < 1.0, "the fast subscriber was held up by the stalled one"
    # the stalled client is cut off with 4408 (its backlog dropped), never kept
    for _ in range(500):
        if stats.too_slow and stats.connections == 0:
            break
        await asyncio.sleep(0.01)
    sampling = False
    await sampler
    assert stats.too_slow == 1 and stats.closes.get(4408) == 1 and stats.connections == 0
    assert deepest <= max_queue
    # it fell behind first: taken off the live path (its bounded buffer overflowed, or the
    # fanout handed it back) to catch up from the log on its own, before it was closed
    assert lagged or store.hub.lag_fallbacks >= 1 or stats.detached >= 1
    assert store.hub.listener_count == 0


async def test_a_slow_reader_falls_back_to_catch_up_and_loses_nothing(make_api: Any) -> None:
    """A client that reads, but slower than the run writes, is handed back from the live
    fanout to its own catch-up path (more than once, possibly) and still gets every frame.

    It rejoins the fanout as soon as it has caught up, even while no event comes: the run
    pauses until it has (a reader used to rejoin only at the next event)."""
    from websockets.asyncio.client import connect

    gate, resume = asyncio.Event(), asyncio.Event()
    api: Api = await make_api(
        engine=BigWords(words=600, size=16_000, gate=gate, pause_after=400, resume=resume),
        delta_coalesce_ms=0.0,
    )
    turn = await start_turn(api)
    stats = api.app[REALTIME_STATS]

    async def resume_once_rejoined() -> None:
        # the run pauses until this reader, caught up in the breather, is live again; on a
        # loaded machine catching up 6 MB through 4 KB socket buffers takes many seconds
        deadline = time.monotonic() + BREATHER_S
        while time.monotonic() < deadline:
            if stats.joined >= 2:
                resume.set()
                return
            await asyncio.sleep(0.01)

    rejoined = asyncio.create_task(resume_once_rejoined())
    url = f"ws://127.0.0.1:{api.client.port}/api/realtime/runs/{turn.run_id}?token={turn.token}"
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", api.client.port or 0))
    frames: list[dict[str, Any]] = []
    # no client keepalive: a client that reads nothing also reads no pong, and its own ping
    # timeout (not the server) would end the test on a slow machine
    async with connect(
        url, sock=sock, max_size=None, max_queue=1, compression=None, ping_interval=None
    ) as ws:
        frames.append(json.loads(await ws.recv()))
        # a narrow path to this client: the server's kernel buffer must not hide the backlog
        (conn,) = api.app[REALTIME].live
        assert conn.transport is not None
        server_side = conn.transport.get_extra_info("socket")
        server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # the run starts once this reader is on the live fanout, which hands it back when
        # it falls behind (on its own subscription, a reader that reads nothing is too slow)
        deadline = time.monotonic() + BREATHER_S
        while stats.joined < 1 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        gate.set()
        # read nothing until the fanout has handed this reader back: falling behind is then
        # certain, not a race between the run's pace and the reader's on a loaded machine
        deadline = time.monotonic() + BREATHER_S
        while stats.detached < 1 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # a counter, not an event: polled
        async for message in ws:
            frames.append(json.loads(message))
    rejoined.cancel()
    stored = await api.app[STORE].read_stream(f"run-{turn.run_id}")
    assert frames == [chat_stream_event(e) for e in stored]
    assert stats.detached >= 1 and stats.joined >= 2  # fell behind, caught up, joined again
    assert stats.too_slow == 0


async def test_metrics_gauges_follow_connections(make_api: Any) -> None:
    api: Api = await make_api()
    sid = (await api.session())["id"]
    stats = api.app[REALTIME_STATS]
    async with api.client.ws_connect(f"/api/realtime/sessions/{sid}", headers=api.h()) as ws:
        await ws.receive(timeout=5)
        assert stats.open[("session", "ws")] == 1 and stats.opened[("session", "ws")] == 1
        assert stats.frames_sent >= 1
