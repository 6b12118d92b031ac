"""Paged lists: every item exactly once in order, cursors only the list that made them accepts."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from sessionstream.core.errors import ValidationFailed
from sessionstream.services import paging
from sessionstream.services.paging import Cursors, Listing
from tests.conftest import Api

S = "/api/campaigns/ai-chat-sessions"


async def walk(api: Api, path: str, name: str, limit: int, **params: str) -> list[dict[str, Any]]:
    """Every page of a list, following ``next`` until it is null."""
    items: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(100):
        query = {**params, "limit": str(limit), **({"after": after} if after else {})}
        r = await api.client.get(path, params=query, headers=api.h())
        assert r.status == 200, await r.text()
        body = await r.json()
        assert len(body[name]) <= limit
        items.extend(body[name])
        after = body["next"]
        if after is None:
            return items
        assert body[name], "a page with a next cursor is never empty"
    raise AssertionError("the list never ended")


async def new_session(api: Api, campaign: str, node: str) -> str:
    r = await api.client.post(S, json={"campaign_id": campaign, "node_id": node}, headers=api.h())
    assert r.status == 201, await r.text()
    session_id: str = (await r.json())["session"]["id"]
    return session_id


async def test_sessions_page_through_every_one_once_in_order(api: Api) -> None:
    campaign, node = await api.campaign_and_node()
    ids = [await new_session(api, campaign, node) for _ in range(11)]
    deleted = ids.pop(4)
    r = await api.client.delete(f"{S}/{deleted}", headers=api.h())
    assert r.status == 200
    await api.session(api.token_b)  # another user's sessions never show up
    whole = await api.client.get(S, params={"campaign_id": campaign}, headers=api.h())
    body = await whole.json()
    assert "next" not in body, "without limit the documented shape stays"
    assert [s["id"] for s in body["sessions"]] == ids
    for limit in (1, 3, 10, 11, 1000):
        paged = await walk(api, S, "sessions", limit, campaign_id=campaign)
        assert paged == body["sessions"], limit


async def test_a_session_created_while_paging_is_listed_once(api: Api) -> None:
    campaign, node = await api.campaign_and_node()
    ids = [await new_session(api, campaign, node) for _ in range(4)]
    r = await api.client.get(S, params={"campaign_id": campaign, "limit": "2"}, headers=api.h())
    first = await r.json()
    ids.append(await new_session(api, campaign, node))
    r = await api.client.get(
        S, params={"campaign_id": campaign, "limit": "10", "after": first["next"]}, headers=api.h()
    )
    rest = await r.json()
    assert rest["next"] is None
    assert [s["id"] for s in first["sessions"] + rest["sessions"]] == ids


async def test_unlimited_list_is_streamed_in_chunks(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paging, "CHUNK", 3)  # several chunks, one short last one
    campaign, node = await api.campaign_and_node()
    ids = [await new_session(api, campaign, node) for _ in range(7)]
    r = await api.client.get(S, params={"campaign_id": campaign}, headers=api.h())
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert "X-Request-Id" in r.headers
    assert [s["id"] for s in (await r.json())["sessions"]] == ids
    empty, _ = await api.campaign_and_node()
    r = await api.client.get(S, params={"campaign_id": empty}, headers=api.h())
    assert await r.json() == {"sessions": []}
    # ``after`` without ``limit``: the rest of the list, streamed
    r = await api.client.get(S, params={"campaign_id": campaign, "limit": "3"}, headers=api.h())
    after = (await r.json())["next"]
    r = await api.client.get(S, params={"campaign_id": campaign, "after": after}, headers=api.h())
    assert [s["id"] for s in (await r.json())["sessions"]] == ids[3:]


async def test_campaigns_and_nodes_page_through_every_one_once(api: Api) -> None:
    for i in range(5):
        r = await api.client.post("/api/campaigns", json={"name": f"c{i}"}, headers=api.h())
        assert r.status == 201
    await api.campaign_and_node(api.token_b)
    whole = await (await api.client.get("/api/campaigns", headers=api.h())).json()
    assert len(whole["campaigns"]) == 5
    for limit in (1, 2, 5):
        assert await walk(api, "/api/campaigns", "campaigns", limit) == whole["campaigns"]

    campaign, _ = await api.campaign_and_node()
    for i in range(6):
        r = await api.client.post(
            f"/api/campaigns/{campaign}/nodes", json={"name": f"n{i}"}, headers=api.h()
        )
        assert r.status == 201
    nodes_path = f"/api/campaigns/{campaign}/nodes"
    whole = await (await api.client.get(nodes_path, headers=api.h())).json()
    assert len(whole["nodes"]) == 7 and "next" not in whole
    for limit in (1, 3, 7, 8):
        assert await walk(api, nodes_path, "nodes", limit) == whole["nodes"]


async def test_session_events_page_through_every_one_once(api: Api) -> None:
    session = await api.session()
    for i in range(6):
        r = await api.client.patch(f"{S}/{session['id']}", json={"title": f"t{i}"}, headers=api.h())
        assert r.status == 200
    path = f"{S}/{session['id']}/events"
    whole = await (await api.client.get(path, params={"limit": "1000"}, headers=api.h())).json()
    assert len(whole["events"]) == 7 and whole["next"] is None
    for limit in (1, 2, 7):
        paged = await walk(api, path, "events", limit)
        assert [e["position"] for e in paged] == [e["position"] for e in whole["events"]]


async def error_of(api: Api, path: str, params: dict[str, str], token: str | None = None) -> Any:
    r = await api.client.get(path, params=params, headers=api.h(token))
    assert r.status == 400, await r.text()
    return (await r.json())["error"]


async def test_bad_limits_and_forged_cursors_are_400(api: Api) -> None:
    campaign, node = await api.campaign_and_node()
    for _ in range(3):
        await new_session(api, campaign, node)
    listing = {"campaign_id": campaign}
    for limit in ("0", "1001", "-1", "x", "1e2", "٣"):
        await error_of(api, S, {**listing, "limit": limit})
    r = await api.client.get(S, params={**listing, "limit": "1"}, headers=api.h())
    good = (await r.json())["next"]
    raw = bytearray(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
    raw[-1] ^= 1  # the mark edited: points elsewhere, signature no longer fits
    edited = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for forged in ("abc", "!!!!", good[:-2], edited, good + "A", "é" * 3, "A" * 600):
        error = await error_of(api, S, {**listing, "limit": "1", "after": forged})
        assert "after" in error["message"]
    for path in ("/api/campaigns", f"/api/campaigns/{campaign}/nodes"):
        await error_of(api, path, {"limit": "1", "after": "abc"})
        await error_of(api, path, {"limit": "0"})


async def test_another_users_cursor_reveals_nothing(api: Api) -> None:
    for i in range(3):
        await api.client.post("/api/campaigns", json={"name": f"a{i}"}, headers=api.h())
        await api.client.post("/api/campaigns", json={"name": f"b{i}"}, headers=api.h(api.token_b))
    r = await api.client.get("/api/campaigns", params={"limit": "1"}, headers=api.h())
    alices = (await r.json())["next"]
    assert alices is not None
    params = {"limit": "1", "after": alices}
    stolen = await error_of(api, "/api/campaigns", params, api.token_b)
    garbage = await error_of(api, "/api/campaigns", {"limit": "1", "after": "x"}, api.token_b)
    assert stolen == garbage, "a foreign cursor is refused exactly like a made-up one"
    # nor does a cursor cross from one list to another of the same user
    campaign, node = await api.campaign_and_node()
    other, _ = await api.campaign_and_node()
    for _ in range(2):
        await new_session(api, campaign, node)
    r = await api.client.get(S, params={"campaign_id": campaign, "limit": "1"}, headers=api.h())
    cursor = (await r.json())["next"]
    await error_of(api, S, {"campaign_id": other, "limit": "1", "after": cursor})
    await error_of(api, "/api/campaigns", {"limit": "1", "after": cursor})


def test_cursor_codec_round_trips_and_binds_its_list() -> None:
    cursors = Cursors("k" * 32)
    mine = Listing("session", "u1", "c1").scope
    mark = ("2026-01-01T00:00:00.000Z", "0b0d3c1e-0000-4000-8000-000000000000")
    token = cursors.encode(mine, mark)
    assert cursors.decode(mine, token) == mark
    for scope in (Listing("session", "u2", "c1").scope, Listing("session", "u1", "c2").scope):
        with pytest.raises(ValidationFailed):
            cursors.decode(scope, token)
    with pytest.raises(ValidationFailed):
        Cursors("another secret" * 3).decode(mine, token)
