"""Who may call what: every route of the app, for its owner, another user and nobody.

The routes come from the app's own router, so a new route fails
``test_every_route_is_in_the_matrix`` until someone decides who may call it.
Each resource route is called by its owner (allowed), by another user (404:
not even its existence leaks), anonymously and with a bad or run-scoped
token (401); public routes answer anyone. Realtime channels (websockets and
the Trigger.dev SSE/long-poll endpoints) are checked the same way with run
tokens: another run's token, an expired token and another user's session are
refused. Tokens never reach the logs, whatever carries them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sessionstream.server.keys import RUN_TOKENS, STORE
from tests.conftest import Api
from tests.torture.live import SESSIONS, live_server
from tests.torture.report import report

S = SESSIONS
Ids = dict[str, str]


@dataclass(frozen=True)
class Entry:
    """How one route is reached and who may reach it.

    ``access``: ``owner`` (another user gets 404), ``list`` (another user gets
    their own view, never the owner's ids), ``create`` (any signed-in user),
    ``public`` (anyone), ``channel`` (authenticates itself: realtime).
    ``fill`` names the resource the route's parameters point at; ``body`` is
    what the owner sends (valid, so the owner's call succeeds).
    """

    access: str
    fill: str = ""
    body: Any = None
    query: str = ""
    ok: tuple[int, ...] = (200,)


# The matrix. Keys are (method, route); HEAD follows GET. Routes the spec
# promises but this build does not have yet are skipped, never failed.
MATRIX: dict[tuple[str, str], Entry] = {
    ("GET", "/healthz"): Entry("public"),
    ("GET", "/metrics"): Entry("public"),
    ("GET", "/api/openapi.json"): Entry("public"),
    ("GET", "/"): Entry("public"),
    ("GET", "/static"): Entry("public"),
    ("GET", "/readyz"): Entry("public"),
    # campaigns and nodes
    ("GET", "/api/campaigns"): Entry("list"),
    ("POST", "/api/campaigns"): Entry("create", body={"name": "mine"}, ok=(201,)),
    ("GET", "/api/campaigns/{id}"): Entry("owner", "campaign"),
    ("DELETE", "/api/campaigns/{id}"): Entry("owner", "doomed_campaign"),
    ("GET", "/api/campaigns/{id}/nodes"): Entry("owner", "campaign"),
    ("POST", "/api/campaigns/{id}/nodes"): Entry("owner", "campaign", {"name": "n"}, ok=(201,)),
    # sessions
    ("GET", S): Entry("list", query="campaign_id={campaign}"),
    ("POST", S): Entry(
        "owner", "", {"campaign_id": "{campaign}", "node_id": "{node}"}, ok=(200, 201)
    ),
    ("GET", S + "/{id}"): Entry("owner", "session"),
    ("PATCH", S + "/{id}"): Entry("owner", "session", {"title": "owner was here"}),
    ("DELETE", S + "/{id}"): Entry("owner", "doomed_session"),
    ("POST", S + "/{id}/turn"): Entry("owner", "turn_session", {"message": "hi"}),
    ("POST", S + "/{id}/generate-examples"): Entry(
        "owner", "examples_session", {"leads": [{"id": "L1", "first_name": "Ana"}]}
    ),
    ("GET", S + "/{id}/events"): Entry("owner", "session"),
    ("POST", S + "/{id}/skeleton/rollback"): Entry(
        "owner", "examples_session", {"framework_version": 1}, ok=(200, 400, 409)
    ),
    ("POST", S + "/{id}/draft/rollback"): Entry(
        "owner", "examples_session", {"index": 0}, ok=(200, 400, 409)
    ),
    ("POST", S + "/{id}/fork"): Entry("owner", "session", {"version": 1}, ok=(201,)),
    ("GET", S + "/{id}/diff"): Entry("owner", "session", query="from=1&to=1"),
    # the log's checkpoint and proofs: hashes only; a proof only of the caller's positions
    # (position 1 is the first user's ``user.created``)
    ("GET", "/api/log/checkpoint"): Entry("list"),
    ("GET", "/api/log/inclusion"): Entry("list", query="position=1"),
    ("GET", "/api/log/consistency"): Entry("list", query="first=1&second=1"),
    # runs
    ("GET", "/api/runs/{run_id}"): Entry("owner", "run"),
    ("POST", "/api/runs/{run_id}/cancel"): Entry("owner", "run"),
    # realtime channels: authenticate themselves (run tokens or the owner's API token)
    ("GET", "/api/realtime/runs/{run_id}"): Entry("channel", "run"),
    ("GET", "/api/realtime/sessions/{id}"): Entry("channel", "session"),
    ("GET", "/realtime/v1/runs/{run_id}"): Entry("channel", "run", query="offset=-1"),
    ("GET", "/realtime/v1/streams/{run_id}/{key}"): Entry("channel", "run"),
    ("OPTIONS", "/realtime/v1/runs/{run_id}"): Entry("public", "run"),
    ("OPTIONS", "/realtime/v1/streams/{run_id}/{key}"): Entry("public", "run"),
}


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, canonical path) of every route; HEAD is checked through its GET."""
    found = set()
    for resource in app.router.resources():
        for route in resource:
            if route.method != "HEAD":
                found.add((route.method, resource.canonical))
    return found


@dataclass
class World:
    """Two users' resources; ``a`` is the owner under test, ``b`` the other user."""

    api: Api
    a: Ids = field(default_factory=dict)
    b: Ids = field(default_factory=dict)
    run_tokens: dict[str, str] = field(default_factory=dict)


async def make_resources(api: Api, token: str) -> tuple[Ids, str]:
    h = api.h(token)
    campaign, node = await api.campaign_and_node(token)
    doomed_campaign, _ = await api.campaign_and_node(token)
    ids: Ids = {"campaign": campaign, "node": node, "doomed_campaign": doomed_campaign}
    for name in ("session", "doomed_session", "turn_session", "examples_session"):
        body = {"campaign_id": campaign, "node_id": node}
        r = await api.client.post(S, json=body, headers=h)
        assert r.status == 201
        ids[name] = (await r.json())["session"]["id"]
    skeleton = {"skeleton": {"subject": "Hi %first_name%", "body": "b"}, "draft_subject": "s"}
    r = await api.client.patch(f"{S}/{ids['examples_session']}", json=skeleton, headers=h)
    assert r.status == 200
    r = await api.client.post(f"{S}/{ids['session']}/turn", json={"message": "go"}, headers=h)
    assert r.status == 200
    started = await r.json()
    ids["run"] = started["runId"]
    await wait_idle(api, token, ids["session"])
    return ids, started["publicAccessToken"]


async def wait_idle(api: Api, token: str, sid: str) -> None:
    for _ in range(500):
        r = await api.client.get(f"{S}/{sid}", headers=api.h(token))
        if (await r.json())["session"]["task_status"] is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the run never ended")


@pytest.fixture
async def world(make_api: Callable[..., Any]) -> World:
    api: Api = await make_api(trigger_poll_s=0.2, trigger_ping_s=0.1)
    w = World(api)
    w.a, token_a_run = await make_resources(api, api.token_a)
    w.b, token_b_run = await make_resources(api, api.token_b)
    w.run_tokens = {"a": token_a_run, "b": token_b_run}
    return w


def fill(template: str, entry: Entry, ids: Ids) -> str:
    key = entry.fill
    path = template
    if "{id}" in path:
        path = path.replace("{id}", ids[key])
    path = path.replace("{run_id}", ids.get("run", "")).replace("{key}", "chat")
    if entry.query:
        path += "?" + entry.query.format(**ids)
    return path


def body_for(entry: Entry, ids: Ids) -> Any:
    if entry.body is None:
        return None
    return json.loads(
        json.dumps(entry.body).replace("{campaign}", ids["campaign"]).replace("{node}", ids["node"])
    )


async def test_every_route_is_in_the_matrix(make_api: Any) -> None:
    """A route nobody classified fails here, so no endpoint ships unchecked."""
    api: Api = await make_api()
    missing = sorted(app_routes(api.app) - set(MATRIX))
    assert not missing, f"routes with no entry in the security matrix: {missing}"


async def call(api: Api, method: str, path: str, headers: dict[str, str], body: Any) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    r = await api.client.request(method, path, **kwargs)
    if r.headers.get("Content-Type", "").startswith("text/event-stream") or "live=true" in path:
        r.close()
    else:
        await r.read()
    return r


async def test_http_matrix(world: World, request: pytest.FixtureRequest) -> None:
    api = world.api
    present = app_routes(api.app)
    bad_tokens = {
        "anonymous": {},
        "malformed header": {"Authorization": "Token abc"},
        "unknown API token": {"Authorization": "Bearer sst_" + "x" * 43},
        "run token used as an API token": {"Authorization": f"Bearer {world.run_tokens['a']}"},
    }
    checked = 0
    for (method, template), entry in sorted(MATRIX.items()):
        if (method, template) not in present or entry.access == "channel":
            continue
        for verb in (method, "HEAD") if method == "GET" else (method,):
            a_path = fill(template, entry, world.a) if entry.fill or entry.query else template
            a_body = body_for(entry, world.a)
            if entry.access == "public":
                path = a_path if "{" not in template else fill(template, entry, world.a)
                if template == "/static":
                    path = "/static/console.js"
                r = await call(api, verb, path, {}, None)
                assert r.status < 400 or (verb == "OPTIONS" and r.status < 500), (verb, path)
                checked += 1
                continue
            for why, headers in bad_tokens.items():
                r = await call(api, verb, a_path, headers, a_body)
                assert r.status == 401, (verb, a_path, why, r.status)
                checked += 1
            b_headers = api.h(api.token_b)
            if entry.access == "owner":
                # the other user names the owner's resource: it does not exist for them
                r = await call(api, verb, a_path, b_headers, a_body)
                assert r.status == 404, (verb, a_path, "other user", r.status)
                checked += 1
            elif entry.access == "list" and verb == "GET":
                r = await api.client.get(a_path, headers=b_headers)
                text = await r.text()
                assert r.status in (200, 404), (a_path, r.status)
                leaked = [k for k, v in world.a.items() if v in text]
                assert not leaked, (a_path, "other user sees", leaked)
                checked += 1
            r = await call(api, verb, a_path, api.h(), a_body)
            expected = (200,) if verb == "HEAD" else entry.ok
            assert r.status in expected, (verb, a_path, "owner", r.status)
            checked += 1
    assert checked > 60
    routes = len([k for k in MATRIX if k in present and MATRIX[k].access != "channel"])
    report(request.config, f"security matrix: {routes} HTTP routes, {checked} caller checks")


# realtime channels ----------------------------------------------------------------------------
def trigger_cases(world: World) -> list[tuple[str, dict[str, str], int]]:
    api = world.api
    tokens = api.app[RUN_TOKENS]
    expired = tokens.mint(world.a["run"], api.user_a, token_ref=api.ref(), ttl_s=-10)

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    return [
        ("anonymous", {}, 401),
        ("garbage token", bearer("not-a-token"), 401),
        ("expired run token", bearer(expired), 401),
        ("token of another run", bearer(world.run_tokens["b"]), 403),
        ("another user's API token", bearer(api.token_b), 404),
        ("forged signature", bearer(forge(world.run_tokens["a"])), 401),
        ("the run's own token", bearer(world.run_tokens["a"]), 200),
        ("the owner's API token", bearer(api.token_a), 200),
    ]


def forge(token: str) -> str:
    """The same claims with someone else's signature."""
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, "not-the-server-secret-0123456789abcdef", algorithm="HS256")


async def test_trigger_channels_matrix(world: World) -> None:
    api = world.api
    run = world.a["run"]
    for url in (f"/realtime/v1/runs/{run}?offset=-1", f"/realtime/v1/streams/{run}/chat"):
        if not url.startswith("/realtime/") or ("GET", _template(url)) not in app_routes(api.app):
            continue
        for why, headers, status in trigger_cases(world):
            r = await api.client.get(url, headers=headers)
            assert r.status == status, (url, why, r.status, await r.text())
            await r.read()


def _template(url: str) -> str:
    path = url.split("?")[0]
    path = re.sub(r"run_[0-9a-f]{32}", "{run_id}", path)
    return re.sub(r"\{run_id\}/chat$", "{run_id}/{key}", path)


WS_REFUSED = range(4000, 5000)


async def ws_outcome(api: Api, path: str, **kwargs: Any) -> tuple[str, int]:
    """("open", 0) if accepted (frames flow, or none yet), ("closed", code) or
    ("http", status) if refused."""
    try:
        ws = await api.client.ws_connect(path, **kwargs)
    except aiohttp.WSServerHandshakeError as exc:
        return "http", exc.status
    try:
        try:
            msg = await ws.receive(timeout=2)
        except TimeoutError:
            return "open", 0  # accepted, nothing to send yet
        if msg.type == aiohttp.WSMsgType.TEXT:
            return "open", 0
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return "closed", int(msg.data)  # the sent code, not a racy 1006
        return "closed", ws.close_code or 0
    finally:
        await ws.close()


async def test_realtime_websocket_matrix(world: World) -> None:
    api = world.api
    routes = app_routes(api.app)
    if ("GET", "/api/realtime/runs/{run_id}") not in routes:
        pytest.skip("this build has no websocket channels")
    tokens = api.app[RUN_TOKENS]
    run_a, run_b = world.a["run"], world.b["run"]
    expired = tokens.mint(run_a, api.user_a, token_ref=api.ref(), ttl_s=-10)
    run_path = f"/api/realtime/runs/{run_a}"
    unknown = f"run_{uuid.uuid4().hex}"
    session_path = f"/api/realtime/sessions/{world.a['session']}"
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("run: its own token", f"{run_path}?token={world.run_tokens['a']}", {}, "open"),
        ("run: owner's API token", run_path, {"headers": api.h()}, "open"),
        ("run: token as subprotocol", run_path, {"protocols": [world.run_tokens["a"]]}, "open"),
        ("run: anonymous", run_path, {}, "refused"),
        ("run: another run's token", f"{run_path}?token={world.run_tokens['b']}", {}, "refused"),
        ("run: expired token", f"{run_path}?token={expired}", {}, "refused"),
        ("run: forged token", f"{run_path}?token={forge(world.run_tokens['a'])}", {}, "refused"),
        ("run: another user's API token", run_path, {"headers": api.h(api.token_b)}, "refused"),
        ("run: unknown run", f"/api/realtime/runs/{unknown}", {"headers": api.h()}, "refused"),
        ("session: owner", session_path, {"headers": api.h()}, "open"),
        ("session: other user", session_path, {"headers": api.h(api.token_b)}, "refused"),
        ("session: anonymous", session_path, {}, "refused"),
        ("session: a run token", f"{session_path}?token={world.run_tokens['a']}", {}, "refused"),
        ("run b: owner b", f"/api/realtime/runs/{run_b}", {"headers": api.h(api.token_b)}, "open"),
    ]
    for why, path, kwargs, want in cases:
        kind, code = await ws_outcome(api, path, **kwargs)
        if want == "open":
            assert kind == "open", ("websocket", why, kind, code)
        else:
            refused = (kind == "http" and 400 <= code < 500) or (
                kind == "closed" and code in WS_REFUSED
            )
            assert refused, ("websocket", why, kind, code)
        # the same channel as server-sent events: the same decision, as an HTTP status
        if "protocols" in kwargs:
            continue  # browsers' EventSource has no subprotocols
        status = await sse_status(api, path, kwargs.get("headers", {}))
        assert (status == 200) == (want == "open") and status < 500, ("sse", why, status)
    # another user's session is refused as "not found", never "forbidden": no existence leak
    kind, code = await ws_outcome(api, session_path, headers=api.h(api.token_b))
    assert (kind, code) in (("closed", 4404), ("http", 404)), (kind, code)
    assert await sse_status(api, session_path, api.h(api.token_b)) == 404


async def sse_status(api: Api, path: str, headers: dict[str, str]) -> int:
    r = await api.client.get(path, headers={**headers, "Accept": "text/event-stream"})
    status = r.status
    r.close()
    return status


async def test_websocket_connections_are_capped_per_user(make_api: Callable[..., Any]) -> None:
    api: Api = await make_api(max_connections_per_user=1)
    if ("GET", "/api/realtime/sessions/{id}") not in app_routes(api.app):
        pytest.skip("this build has no websocket channels")
    sid = (await api.session())["id"]
    path = f"/api/realtime/sessions/{sid}"
    first = await api.client.ws_connect(path, headers=api.h())
    try:
        kind, code = await ws_outcome(api, path, headers=api.h())
        assert (kind, code) in (("closed", 4429), ("http", 429)), (kind, code)
        r = await api.client.get(path, headers={**api.h(), "Accept": "text/event-stream"})
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        r.close()
        # another user has their own allowance
        other = (await api.session(api.token_b))["id"]
        kind, _ = await ws_outcome(
            api, f"/api/realtime/sessions/{other}", headers=api.h(api.token_b)
        )
        assert kind in ("open", "idle")
    finally:
        await first.close()


# tokens in logs ---------------------------------------------------------------------------------
def test_tokens_never_reach_the_logs(tmp_path: Path) -> None:
    """A debug-level server sees tokens in headers, query strings and subprotocols,
    valid and refused; none of them appears in its output."""
    with live_server(tmp_path, SESSIONSTREAM_LOG_LEVEL="DEBUG") as live:
        sid = live.seeded_a.session_id
        status, started, _ = live.call(live.token_a, "POST", f"{S}/{sid}/turn", {"message": "hi"})
        assert status == 200
        run_id, run_token = started["runId"], started["publicAccessToken"]
        bogus = "sst_" + "Q" * 43
        secrets = [live.token_a, live.token_b, run_token, bogus]
        for token in secrets:
            live.call(token, "GET", f"{S}/{sid}")
            live.call(None, "GET", f"{S}/{sid}?token={token}")
            live.call(None, "GET", f"/realtime/v1/runs/{run_id}?offset=-1&token={token}")
            live.call(token, "GET", f"/realtime/v1/runs/{run_id}?offset=-1")
            live.call(token, "GET", f"/no/such/path?token={token}")
            live.call(None, "GET", f"/api/runs/{run_id}", headers={"X-Api-Key": token})
        asyncio.run(websocket_attempts(live.server.ws_url, run_id, sid, secrets))
        log_text = live.log_path.read_text(errors="replace")
    assert log_text, "the server logged nothing at DEBUG: the check would prove nothing"
    for token in secrets:
        assert token not in log_text
        # nor a recognisable piece of it (a JWT's signature, an API token's random part)
        assert token[-20:] not in log_text


async def websocket_attempts(ws_base: str, run_id: str, sid: str, secrets: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        for token in secrets:
            for path, kwargs in (
                (f"/api/realtime/runs/{run_id}?token={token}", {}),
                (f"/api/realtime/runs/{run_id}", {"protocols": [token]}),
                (f"/api/realtime/runs/{run_id}", {"headers": {"Authorization": f"Bearer {token}"}}),
                (f"/api/realtime/sessions/{sid}?token={token}", {}),
                (f"/api/realtime/sessions/{sid}", {"protocols": [token]}),
            ):
                try:
                    async with http.ws_connect(ws_base + path, **kwargs) as ws:
                        await ws.receive(timeout=1)
                except (aiohttp.ClientError, TimeoutError):
                    pass


# rate limits -------------------------------------------------------------------------------------
async def test_rate_limit_is_per_token_on_every_authenticated_route(
    make_api: Callable[..., Any],
) -> None:
    api: Api = await make_api(rate_limit=2.0, rate_burst=3)
    session = await api.session()
    sid = session["id"]
    routes = [
        ("GET", f"{S}/{sid}", None),
        ("PATCH", f"{S}/{sid}", {"title": "t"}),
        ("GET", f"{S}?campaign_id={session['campaign_id']}", None),
        ("POST", "/api/campaigns", {"name": "c"}),
        ("GET", f"/api/runs/run_{uuid.uuid4().hex}", None),
    ]
    for method, path, body in routes:
        # a fresh token of the same user per route: each starts with a full bucket
        token = await second_token(api)
        statuses = []
        for _ in range(6):
            r = await api.client.request(method, path, json=body, headers=api.h(token))
            statuses.append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert (await r.json())["error"]["code"] == "rate_limited"
        assert 429 in statuses, (method, path, statuses)
    # another user's token was never slowed down by all this
    r = await api.client.get("/api/campaigns", headers=api.h(api.token_b))
    assert r.status == 200


async def second_token(api: Api) -> str:
    """Another API token of user a, issued the way the CLI issues one."""
    from sessionstream.eventstore.model import NewEvent
    from sessionstream.services.accounts import hash_token, new_api_token

    token = new_api_token()
    event = NewEvent("token.issued", {"token_hash": hash_token(token)}, {"actor": "system"})
    await api.app[STORE].append(f"user-{api.user_a}", [event])
    return token


async def test_realtime_connections_are_capped_per_user_with_retry_after(
    make_api: Callable[..., Any],
) -> None:
    """Long-lived channels are bounded per user instead of per request."""
    api: Api = await make_api(max_connections_per_user=1, trigger_ping_s=0.1)
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "hi"}, headers=api.h())
    run_id = (await r.json())["runId"]
    await wait_idle(api, api.token_a, session["id"])
    url = f"/realtime/v1/runs/{run_id}?offset=-1"
    # a finished run's feed answers at once, so hold a connection with a live long-poll
    first = await api.client.get(url, headers=api.h())
    handle = first.headers.get("electric-handle", "")
    offset = first.headers.get("electric-offset", "")
    await first.read()
    live = f"/realtime/v1/runs/{run_id}?live=true&handle={handle}&offset={offset}"
    held = asyncio.create_task(api.client.get(live, headers=api.h()))
    await asyncio.sleep(0.1)
    r = await api.client.get(live, headers=api.h())
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1, r.status
    assert (await r.json())["error"]["code"] == "too_many_connections"
    # another user is unaffected
    r = await api.client.get(url, headers=api.h(api.token_b))
    assert r.status == 404
    held.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await held


async def test_realtime_connects_count_against_the_token_rate(
    make_api: Callable[..., Any],
) -> None:
    """A reconnect storm is rate-limited per credential like any request (429 + Retry-After),
    whichever way the token travels; another token keeps its own allowance."""
    api: Api = await make_api(rate_limit=1.0, rate_burst=6)
    session = await api.session()
    sid = session["id"]
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "hi"}, headers=api.h())
    started = await r.json()
    run_id, run_token = started["runId"], started["publicAccessToken"]
    store = api.app[STORE]
    for _ in range(500):  # wait on the read model: API calls would spend the token's budget
        doc = await store.get_doc("run", run_id)
        if doc is not None and doc.body["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.01)
    # one bucket per credential, whichever wire it travels on: each wire gets its own token
    channels = [
        (f"/realtime/v1/runs/{run_id}?offset=-1", {"Authorization": f"Bearer {run_token}"}),
        (
            f"/api/realtime/runs/{run_id}?token={await second_token(api)}",
            {"Accept": "text/event-stream"},
        ),
        (
            f"/api/realtime/sessions/{sid}",
            {**api.h(await second_token(api)), "Accept": "text/event-stream"},
        ),
    ]
    checked = 0
    for path, headers in channels:
        template = re.sub(r"/sessions/[0-9a-f-]{36}", "/sessions/{id}", _template(path))
        if ("GET", template) not in app_routes(api.app):
            continue
        statuses = []
        for _ in range(10):
            r = await api.client.get(path, headers=headers)
            statuses.append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert (await r.json())["error"]["code"] == "rate_limited"
            r.close()
        assert statuses[0] == 200 and 429 in statuses, (path, statuses)
        checked += 1
    assert checked >= 1
    # another credential keeps its own allowance
    r = await api.client.get(f"{S}/{sid}", headers=api.h(api.token_b))
    assert r.status == 404
