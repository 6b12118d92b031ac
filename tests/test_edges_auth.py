"""Trustworthy at the edges, part 1: credentials and input.

Each test here failed on the code before it (the issue "Trustworthy at the
edges" numbers them): revocation reaches open channels and the run tokens
minted with the revoked token (1), one limiter key per credential (3),
``generate-examples`` bounds ``availableVarNames`` like a turn (5), and the
hardening gaps: run-token scopes, headers of ``/static/index.html``, the
``Server`` header, idle connections. Odd digits (4) are
``tests/test_numbers_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from multidict import CIMultiDict

from sessionstream.server.console import CSP
from sessionstream.server.keys import SETTINGS, STORE
from sessionstream.server.realtime import REALTIME
from sessionstream.services.accounts import issue_token, revoke_token
from tests import serverproc
from tests.conftest import Api
from tests.scripted_engine import ScriptedEngine
from tests.test_realtime import SSE, S, bearer, start_turn

CACHE_S = 1.0


def trigger(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def close_code(ws: aiohttp.ClientWebSocketResponse) -> int:
    """The code of the server's close frame (within 5 s), skipping data frames before it."""
    async with asyncio.timeout(5):
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.CLOSE:
                return int(message.data)
            if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                return ws.close_code or 1006


async def until(check: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


# 1. revocation ---------------------------------------------------------------------------------
async def test_revoking_a_token_closes_every_channel_opened_with_it_or_its_run_tokens(
    make_api: Any,
) -> None:
    """Websockets close 4401, SSE ends, the Trigger.dev stream drops and the long-poll answers,
    within the token cache's lifetime; a channel of another token of the same user stays."""
    gate = asyncio.Event()  # the runs stay running: their channels would stay open
    api: Api = await make_api(
        engine=ScriptedEngine(gate=gate),
        token_cache_s=CACHE_S,
        trigger_poll_s=30.0,
        trigger_ping_s=0.1,
        sse_ping_s=0.1,
    )
    store = api.app[STORE]
    doomed = await issue_token(store, api.user_a)
    turn = await start_turn(api, token=doomed)  # its publicAccessToken is minted from doomed
    kept = await start_turn(api)
    live = api.app[REALTIME].live

    session_ws = await api.client.ws_connect(
        f"/api/realtime/sessions/{turn.session_id}", headers=api.h(doomed)
    )
    run_ws = await api.client.ws_connect(
        f"/api/realtime/runs/{turn.run_id}", protocols=bearer(turn.token)
    )
    sse = await api.client.get(
        f"/api/realtime/sessions/{turn.session_id}", headers={**api.h(doomed), **SSE}
    )
    assert sse.status == 200
    stream = await api.client.get(
        f"/realtime/v1/streams/{turn.run_id}/chat", headers=trigger(turn.token)
    )
    assert stream.status == 200
    snap = await api.client.get(
        f"/realtime/v1/runs/{turn.run_id}?offset=-1", headers=trigger(turn.token)
    )
    offset = snap.headers["electric-offset"]
    poll = asyncio.create_task(
        api.client.get(
            f"/realtime/v1/runs/{turn.run_id}?offset={offset}&handle=run-{turn.run_id}&live=true",
            headers=trigger(turn.token),
        )
    )
    control = await api.client.ws_connect(
        f"/api/realtime/sessions/{kept.session_id}", headers=api.h()
    )
    await until(lambda: len(live) == 6)

    revoked_at = time.monotonic()
    await revoke_token(store, doomed)
    assert await close_code(session_ws) == 4401
    assert await close_code(run_ws) == 4401
    async with asyncio.timeout(5):
        await sse.content.read()  # the SSE body ends
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await stream.content.read()  # dropped: the SDK reconnects, and is refused
        answered = await poll
    elapsed = time.monotonic() - revoked_at
    assert answered.status in (200, 401)
    assert elapsed < CACHE_S + 1.5, elapsed
    await until(lambda: len(live) == 1)
    assert not control.closed  # another token of the same user: untouched

    # and nothing new opens with either
    r = await api.client.get(
        f"/realtime/v1/runs/{turn.run_id}?offset=-1", headers=trigger(turn.token)
    )
    assert r.status == 401
    r = await api.client.get(
        f"/api/realtime/runs/{turn.run_id}", headers={**trigger(turn.token), **SSE}
    )
    assert r.status == 401
    async with api.client.ws_connect(
        f"/api/realtime/runs/{turn.run_id}", protocols=bearer(turn.token)
    ) as ws:
        assert await close_code(ws) == 4401
    r = await api.client.get(f"{S}/{turn.session_id}", headers=api.h(doomed))
    assert r.status == 401
    await control.close()
    gate.set()


async def test_a_run_token_minted_with_a_revoked_token_is_refused_at_open(make_api: Any) -> None:
    api: Api = await make_api(token_cache_s=0)
    doomed = await issue_token(api.app[STORE], api.user_a)
    turn = await start_turn(api, token=doomed)
    kept = await start_turn(api)
    await revoke_token(api.app[STORE], doomed)
    for t, status in ((turn, 401), (kept, 200)):
        r = await api.client.get(
            f"/realtime/v1/runs/{t.run_id}?offset=-1", headers=trigger(t.token)
        )
        assert r.status == status, await r.text()
        r = await api.client.get(f"/realtime/v1/streams/{t.run_id}/chat", headers=trigger(t.token))
        assert r.status == status, await r.text()
        r.close()
        r = await api.client.get(f"/api/realtime/runs/{t.run_id}?token={t.token}", headers=SSE)
        assert r.status in ((401,) if status == 401 else (200, 204)), await r.text()
        r.close()


# 3. one limiter key per credential -------------------------------------------------------------
async def test_the_rate_limit_keys_on_the_credential_not_on_the_header_text(make_api: Any) -> None:
    api: Api = await make_api(rate_limit=0.001, rate_burst=5)
    store = api.app[STORE]
    turn = await start_turn(api)  # 4 requests of alice's token; the run token is its own key
    unknown = f"/api/realtime/runs/run_{uuid.uuid4().hex}"

    async def statuses(requests: list[tuple[str, CIMultiDict[str]]]) -> list[int]:
        seen = []
        for path, headers in requests:
            r = await api.client.get(path, headers=headers)
            seen.append(r.status)
            r.close()
        return seen

    token = await issue_token(store, api.user_a)
    spaced = [
        (unknown, CIMultiDict({"Authorization": "Bearer" + " " * n + token, **SSE}))
        for n in range(1, 13)
    ]
    cased = await issue_token(store, api.user_a)
    schemes = ["Bearer", "bearer", "BEARER", "bEaReR"] * 3
    case_variants = [
        (unknown, CIMultiDict({"Authorization": f"{s} {cased}", **SSE})) for s in schemes
    ]
    queried = await issue_token(store, api.user_a)
    junk = [
        (f"{unknown}?token={queried}", CIMultiDict([("Authorization", f"junk-{i}"), *SSE.items()]))
        for i in range(12)
    ]
    feed = f"/realtime/v1/runs/{turn.run_id}?offset=-1"
    trigger_spaced = [
        (feed, CIMultiDict({"Authorization": "Bearer" + " " * n + turn.token}))
        for n in range(1, 13)
    ]
    for requests in (spaced, case_variants, junk, trigger_spaced):
        seen = await statuses(requests)
        assert 429 not in seen[:5] and set(seen[5:]) == {429}, seen


# 5. generate-examples bounds availableVarNames as a turn does ----------------------------------
@pytest.mark.parametrize(
    "names",
    [["v"] * 201, ["x" * 101], ["x" * 3_000_000]],
    ids=["201 names", "a 101-character name", "a 3,000,000-character name"],
)
async def test_generate_examples_bounds_available_var_names_like_a_turn(
    make_api: Any, names: list[str]
) -> None:
    api: Api = await make_api(max_body_bytes=8 * 1024 * 1024)
    sid = (await api.session())["id"]
    r = await api.client.patch(f"{S}/{sid}", json={"skeleton": {"subject": "s"}}, headers=api.h())
    assert r.status == 200, await r.text()
    body = {"leads": [{"id": "l1", "first_name": "Ada"}], "availableVarNames": names}
    for route, payload in (
        ("turn", {"message": "hi", "availableVarNames": names}),
        ("generate-examples", body),
    ):
        raw = io.BytesIO(json.dumps(payload).encode())  # a large body goes as a stream
        headers = {**api.h(), "Content-Type": "application/json"}
        r = await api.client.post(f"{S}/{sid}/{route}", data=raw, headers=headers)
        assert r.status == 400, (route, r.status, await r.text())
        assert "availableVarNames" in await r.text()
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    assert (await r.json())["session"]["task_status"] is None  # no run started


# hardening -------------------------------------------------------------------------------------
def run_token(api: Api, run_id: str, scopes: Any) -> str:
    """A token signed with the server's key, with the scopes a test chooses."""
    now = int(time.time())
    claims = {
        "iss": "https://id.trigger.dev",
        "aud": "https://api.trigger.dev",
        "sub": api.user_a,
        "iat": now,
        "exp": now + 600,
        "pub": True,
        "scopes": scopes,
        "tok": hashlib.sha256(api.token_a.encode()).hexdigest()[:16],
    }
    return jwt.encode(claims, api.app[SETTINGS].resolved_secret(), algorithm="HS256")


async def test_run_token_scopes_are_matched_exactly_and_read_all_is_refused(make_api: Any) -> None:
    api: Api = await make_api()
    turn = await start_turn(api)
    run = turn.run_id
    cases = [
        ([f"read:runs:{run}"], 200),
        (["read:all"], 403),
        (["read:runs"], 403),
        ([f"read:runs:{run}x"], 403),
        ([f"read:runs:{run[:-1]}"], 403),
        ("x read:all y", 401),  # a string, once searched as text
        (f"read:runs:{run}", 401),
        ([["read:all"]], 401),
    ]
    for scopes, status in cases:
        token = run_token(api, run, scopes)
        r = await api.client.get(f"/realtime/v1/runs/{run}?offset=-1", headers=trigger(token))
        assert r.status == status, (scopes, r.status, await r.text())


async def test_the_static_console_page_gets_the_headers_of_the_console(make_api: Any) -> None:
    api: Api = await make_api()
    root = await api.client.get("/")
    for path in ("/static/index.html", "/static/console.css", "/static/sessionstream.js"):
        r = await api.client.get(path)
        if r.status == 404:
            continue
        assert (
            r.headers["Content-Security-Policy"] == CSP == root.headers["Content-Security-Policy"]
        )
        assert r.headers["X-Frame-Options"] == "DENY" == root.headers["X-Frame-Options"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = await api.client.get("/static/index.html")
    assert r.status == 200 and "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


async def test_the_server_header_names_no_versions(make_api: Any) -> None:
    api: Api = await make_api()
    for path in ("/healthz", "/", "/api/campaigns", "/static/index.html", "/nowhere"):
        r = await api.client.get(path)
        server = r.headers.get("Server", "")
        assert "Python" not in server and "aiohttp" not in server, (path, server)


def test_an_idle_connection_is_closed_and_no_answer_names_versions(tmp_path: Path) -> None:
    """A connection that never sends a request is closed after ``keepalive_s`` (it was 75 s);
    the 400 aiohttp writes itself for a malformed request names no versions either."""
    store = ["--db", str(tmp_path / "idle.db")]
    env = serverproc.base_env(SESSIONSTREAM_KEEPALIVE_S="1")
    server = serverproc.ServerProcess(store, env=env, log_path=tmp_path / "server.log").start()
    try:
        host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as idle:
            opened = time.monotonic()
            assert idle.recv(1) == b""  # closed by the server, not by our timeout
            assert time.monotonic() - opened < 5
        for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
            with socket.create_connection((host, int(port)), timeout=10) as conn:
                conn.sendall(raw)
                head = conn.recv(4096).split(b"\r\n\r\n")[0].decode()
            assert head.startswith("HTTP/1.0 400"), head
            assert "Server: sessionstream" in head and "aiohttp" not in head, head
    finally:
        server.stop()
