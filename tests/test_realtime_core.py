"""The realtime core every wire sits on: one connection count, one cursor rule, one shutdown.

The websocket channels and the Trigger.dev feeds used to count connections
apart (a user could hold the per-user limit on each, and the per-process
limit never applied to Trigger.dev feeds), read cursors by different rules
and shut down differently. These tests hold them to the one, stricter rule.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import aiohttp
import pytest

from sessionstream.core.errors import ValidationFailed
from sessionstream.eventstore.model import NewEvent
from sessionstream.server.cursor import (
    AFTER,
    LAST_EVENT_ID,
    Cursor,
    channel_cursor,
    offset_seq,
    parse_cursor,
)
from sessionstream.server.keys import STORE
from sessionstream.server.realtime import REALTIME, REALTIME_STATS
from sessionstream.server.realtime_stats import RealtimeStats
from sessionstream.server.trigger import TRIGGER
from tests.conftest import Api
from tests.scripted_engine import ScriptedEngine
from tests.test_realtime import SSE, close_of
from tests.test_trigger_protocol import FakeRun, fake_run, feed_url, snapshot

FAST: dict[str, Any] = {"trigger_poll_s": 5.0, "trigger_ping_s": 0.1}


def stream_url(run: FakeRun) -> str:
    return f"/realtime/v1/streams/{run.id}/chat"


async def until(check: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def hold_stream(api: Api, run: FakeRun) -> aiohttp.ClientResponse:
    """A Trigger.dev stream, open and past its first frame."""
    r = await api.client.get(stream_url(run), headers=run.h())
    assert r.status == 200, await r.text()
    await r.content.readuntil(b"\n\n")
    return r


async def hold_session_ws(api: Api, sid: str, token: str) -> aiohttp.ClientWebSocketResponse:
    ws = await api.client.ws_connect(f"/api/realtime/sessions/{sid}", headers=api.h(token))
    assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT
    return ws


def start_poll(api: Api, run: FakeRun, offset: str) -> asyncio.Task[aiohttp.ClientResponse]:
    url = feed_url(run.id, offset=offset, handle=f"run-{run.id}", live="true", cursor="1")
    return asyncio.create_task(api.client.get(url, headers=run.h()))


async def assert_refused_429(r: aiohttp.ClientResponse) -> None:
    assert r.status == 429, await r.text()
    assert int(r.headers["Retry-After"]) >= 1
    assert (await r.json())["error"]["code"] == "too_many_connections"


# one count per user, across wires -------------------------------------------------------------
async def test_a_user_at_the_cap_on_websockets_is_refused_trigger_feeds(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), max_connections_per_user=2, **FAST)
    run = await fake_run(api)
    snap, _ = await snapshot(api, run)
    sid = (await api.session())["id"]
    held = [await hold_session_ws(api, sid, api.token_a) for _ in range(2)]
    stats = api.app[REALTIME_STATS]
    assert stats.by_user == {api.user_a: 2}

    await assert_refused_429(await api.client.get(stream_url(run), headers=run.h()))
    await assert_refused_429(await start_poll(api, run, snap.headers["electric-offset"]))
    # a snapshot holds nothing, so it is still served
    assert (await snapshot(api, run))[0].status == 200
    # the other user is not held back by the first one's channels
    other_sid = (await api.session(api.token_b))["id"]
    await (await hold_session_ws(api, other_sid, api.token_b)).close()
    assert api.app[TRIGGER].stats.streams_opened == 0

    for ws in held:
        await ws.close()
    await until(lambda: stats.by_user.get(api.user_a, 0) == 0)
    r = await hold_stream(api, run)
    await run.add("run.completed", {"output": {}})
    await r.read()


async def test_a_user_at_the_cap_on_trigger_feeds_is_refused_a_websocket(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), max_connections_per_user=2, **FAST)
    run = await fake_run(api)
    snap, _ = await snapshot(api, run)
    sid = (await api.session())["id"]
    stats = api.app[REALTIME_STATS]
    stream = await hold_stream(api, run)
    poll = start_poll(api, run, snap.headers["electric-offset"])
    await until(lambda: stats.by_user.get(api.user_a) == 2)
    assert stats.open[("run", "trigger_sse")] == stats.open[("run", "trigger_poll")] == 1

    code, frames = await close_of(api, f"/api/realtime/sessions/{sid}", headers=api.h())
    assert (code, frames) == (4429, [])
    r = await api.client.get(f"/api/realtime/sessions/{sid}", headers={**SSE, **api.h()})
    await assert_refused_429(r)
    assert stats.refused[429] == 2

    await run.add("run.completed", {"output": {}})  # ends the stream and answers the poll
    await stream.read()
    assert (await poll).status == 200
    await until(lambda: stats.connections == 0)
    ws = await hold_session_ws(api, sid, api.token_a)
    await ws.close()


# one count per process, across wires -----------------------------------------------------------
async def test_the_process_cap_applies_to_trigger_feeds(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), max_connections=2, **FAST)
    run = await fake_run(api)
    snap, _ = await snapshot(api, run)
    stats = api.app[REALTIME_STATS]
    sid_b = (await api.session(api.token_b))["id"]
    held = [await hold_session_ws(api, sid_b, api.token_b) for _ in range(2)]

    # another user's channels fill the process: user a's Trigger.dev feeds are refused
    r = await api.client.get(stream_url(run), headers=run.h())
    await assert_refused_429(r)
    assert "maximum of 2" in (await r.json())["error"]["message"]
    await assert_refused_429(await start_poll(api, run, snap.headers["electric-offset"]))

    # and Trigger.dev feeds take room that websockets then do not get
    await held.pop().close()
    await until(lambda: stats.connections == 1)
    stream = await hold_stream(api, run)
    assert stats.connections == 2
    code, _ = await close_of(api, f"/api/realtime/sessions/{sid_b}", headers=api.h(api.token_b))
    assert code == 4429
    metrics = await (await api.client.get("/metrics")).text()
    assert "sessionstream_trigger_connections 1.0" in metrics
    assert (
        'sessionstream_realtime_connections{channel="run",transport="trigger_sse"} 1.0' in metrics
    )
    assert 'sessionstream_realtime_connections{channel="session",transport="ws"} 1.0' in metrics
    await run.add("run.completed", {"output": {}})
    await stream.read()
    await held.pop().close()
    await until(lambda: stats.connections == 0)
    assert stats.by_user == {}


# shutdown --------------------------------------------------------------------------------------
async def test_shutdown_turns_new_trigger_feeds_away_like_channels(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await fake_run(api)
    snap, _ = await snapshot(api, run)
    await api.app[REALTIME].shutdown(api.app)
    for r in (
        await api.client.get(stream_url(run), headers=run.h()),
        await start_poll(api, run, snap.headers["electric-offset"]),
    ):
        assert r.status == 503, await r.text()
        assert (await r.json())["error"]["code"] == "shutting_down"
    sid = (await api.session())["id"]
    code, _ = await close_of(api, f"/api/realtime/sessions/{sid}", headers=api.h())
    assert code == 1001
    assert (await snapshot(api, run))[0].status == 200  # holds nothing: still answered


# one cursor rule -------------------------------------------------------------------------------
def test_one_cursor_rule() -> None:
    assert parse_cursor(None, AFTER) is None and parse_cursor("  ", AFTER) is None
    assert parse_cursor(" 7 ", AFTER) == 7 and parse_cursor("007", AFTER) == 7
    # at most 18 digits, as every number on the wire (the cursors allowed 20, history 18)
    assert parse_cursor("9" * 18, AFTER) == int("9" * 18)
    for bad in ("-3", "+3", "3.0", "²", "٣", "1e3", "9" * 19, "9" * 21, "0x10", "--5", "5\u3000"):
        with pytest.raises(ValidationFailed) as err:
            parse_cursor(bad, LAST_EVENT_ID)
        assert err.value.message.startswith("Last-Event-ID must be a non-negative integer")
    for bad in ("1_²", "²_1", "1_-1", "-1_1"):
        with pytest.raises(ValidationFailed):
            offset_seq(bad)
    assert channel_cursor("5", None) == Cursor(5, AFTER, True)
    assert channel_cursor("0", None) == channel_cursor(None, None) == Cursor(0, AFTER, False)
    assert channel_cursor("5", "2") == Cursor(2, LAST_EVENT_ID, True)  # Last-Event-ID wins
    assert channel_cursor("5", " ") == Cursor(5, AFTER, True)  # a blank one is no cursor


async def test_every_wire_refuses_a_bad_cursor_with_400(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await fake_run(api)
    sid = (await api.session())["id"]
    # the Trigger.dev stream used to clamp a negative Last-Event-ID and replay from seq 1
    r = await api.client.get(stream_url(run), headers={**run.h(), "Last-Event-ID": "-3"})
    assert r.status == 400 and "Last-Event-ID" in (await r.json())["error"]["message"]
    url = feed_url(run.id, offset="1_²", handle=f"run-{run.id}", live="true")
    assert (await api.client.get(url, headers=run.h())).status == 400
    # a digit str.isdigit() accepts but int() does not was a 500 on the channels
    for path in (f"/api/realtime/runs/{run.id}", f"/api/realtime/sessions/{sid}"):
        r = await api.client.get(f"{path}?after=²", headers={**SSE, **api.h()})
        assert r.status == 400, await r.text()
        r = await api.client.get(path, headers={**SSE, **api.h(), "Last-Event-ID": "9" * 21})
        assert r.status == 400
        code, _ = await close_of(api, f"{path}?after=²", headers=api.h())
        assert code == 4400


async def test_a_resync_names_the_field_the_cursor_came_in(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(), **FAST)
    run = await fake_run(api)
    path = f"/api/realtime/runs/{run.id}"
    r = await api.client.get(path, headers={**SSE, **api.h(), "Last-Event-ID": "99"})
    error = (await r.json())["error"]
    assert r.status == 409 and error["details"]["head"] == 2
    assert error["message"].startswith("Last-Event-ID 99 is beyond")
    r = await api.client.get(f"{path}?after=99", headers={**SSE, **api.h()})
    assert (await r.json())["error"]["message"].startswith("after 99 is beyond")


# slow readers on the Trigger.dev stream --------------------------------------------------------
async def test_a_trigger_stream_that_is_not_read_is_dropped(make_api: Any) -> None:
    """The SSE pump bounds every write on both SSE wires: a Trigger.dev client that stops
    reading is cut off after ``ws_send_timeout_s``, its backlog dropped, its slot freed."""
    api: Api = await make_api(engine=ScriptedEngine(), ws_send_timeout_s=0.5, **FAST)
    run = await fake_run(api)
    big = "x" * 16_000
    meta = {"actor": {"type": "run", "id": run.id}, "session_id": run.session_id}
    for _ in range(14):  # ~11 MB: more than the kernel's socket buffers absorb
        batch = [NewEvent("message.delta", {"text": big}, meta) for _ in range(50)]
        await api.app[STORE].append(run.stream, batch)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", api.client.port or 0))
        request = (
            f"GET {stream_url(run)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {run.token}\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        feeds, stats = api.app[TRIGGER], api.app[REALTIME_STATS]
        await until(lambda: feeds.stats.streams_opened == 1)
        await until(lambda: feeds.stats.streams_dropped == 1 and stats.connections == 0, 10.0)
        assert feeds.stats.streams_completed == 0
        assert feeds.stats.frames_sent < 700
    finally:
        sock.close()


WIRES = {
    "ws": (
        "/api/realtime/runs/{id}?token={token}",
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    ),
    "sse": ("/api/realtime/runs/{id}?token={token}", "Accept: text/event-stream\r\n"),
    "trigger": ("/realtime/v1/streams/{id}/chat", "Authorization: Bearer {token}\r\n"),
}


def narrow_server_sends(api: Api) -> None:
    """Small kernel send buffers on the connections the server accepts from now on (they
    inherit the listener's), so the transport's backlog, which the send timeout watches,
    holds the frame instead of the kernel."""
    assert api.client.server.runner is not None
    for site in api.client.server.runner.sites:
        server = cast(asyncio.Server, site._server)
        for listener in server.sockets:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


@pytest.mark.parametrize("wire", sorted(WIRES))
async def test_a_slow_but_steady_reader_of_a_large_frame_is_not_cut_off(
    make_api: Any, wire: str
) -> None:
    """The send timeout times silence, not a whole write: a 1.5 MB reply read steadily for
    several send timeouts arrives whole on every wire (it used to be cut off mid-frame)."""
    api: Api = await make_api(engine=ScriptedEngine(), ws_send_timeout_s=0.3, **FAST)
    run = await fake_run(api)
    await run.add("message.completed", {"text": "y" * 1_500_000})
    await run.add("run.completed", {})
    path, head = WIRES[wire]
    narrow_server_sends(api)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    received = bytearray()
    started = loop.time()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", api.client.port or 0))
        request = (
            f"GET {path.format(id=run.id, token=run.token)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + head.format(token=run.token)
            + "\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        while b"run.completed" not in received[-4096:]:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10.0)
            assert chunk, f"cut off after {len(received)} bytes"
            received += chunk
            await asyncio.sleep(0.004)  # ~1 MB/s: the whole reply takes several timeouts
    finally:
        sock.close()
    assert loop.time() - started > 3 * 0.3, "the reader was not slow: the test proves nothing"
    assert received.count(b"y") >= 1_500_000
    stats = api.app[REALTIME_STATS]
    assert stats.too_slow == 0 and api.app[TRIGGER].stats.streams_dropped == 0


def test_stats_count_every_wire_in_one_total() -> None:
    stats = RealtimeStats(open={("run", "ws"): 2, ("session", "sse"): 1, ("run", "trigger_sse"): 3})
    stats.open[("run", "trigger_poll")] = 4
    assert stats.connections == 10 and stats.trigger_connections == 7
