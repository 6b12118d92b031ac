"""The documented session API: every status code, field semantics, ownership."""

from __future__ import annotations

import asyncio
import uuid

from tests.conftest import Api

S = "/api/campaigns/ai-chat-sessions"
ROW_KEYS = {
    "id",
    "user_id",
    "campaign_id",
    "node_id",
    "title",
    "messages",
    "draft_subject",
    "draft_body",
    "skeleton",
    "skeleton_history",
    "draft_history",
    "framework_version",
    "generated_examples",
    "task_status",
    "created_at",
    "updated_at",
}


async def test_create_returns_empty_documented_row(api: Api) -> None:
    session = await api.session()
    assert set(session) == ROW_KEYS
    for key in ROW_KEYS - {"id", "user_id", "campaign_id", "node_id", "created_at", "updated_at"}:
        assert session[key] is None, key
    assert session["user_id"] == api.user_a
    assert session["created_at"].endswith("Z")


async def test_get_and_list_in_created_order(api: Api) -> None:
    campaign, node = await api.campaign_and_node()
    ids = []
    for _ in range(3):
        r = await api.client.post(
            S, json={"campaign_id": campaign, "node_id": node}, headers=api.h()
        )
        ids.append((await r.json())["session"]["id"])
    r = await api.client.get(S, params={"campaign_id": campaign}, headers=api.h())
    assert r.status == 200
    assert [s["id"] for s in (await r.json())["sessions"]] == ids
    r = await api.client.get(f"{S}/{ids[1]}", headers=api.h())
    assert r.status == 200
    assert (await r.json())["session"]["id"] == ids[1]
    assert r.headers["ETag"] == '"1"'


async def test_list_requires_campaign_id_and_empty_list_is_valid(api: Api) -> None:
    r = await api.client.get(S, headers=api.h())
    assert r.status == 400
    body = await r.json()
    assert body["error"]["code"] == "validation_error"
    r = await api.client.get(S, params={"campaign_id": str(uuid.uuid4())}, headers=api.h())
    assert r.status == 200 and (await r.json()) == {"sessions": []}
    r = await api.client.get(S, params={"campaign_id": "nope"}, headers=api.h())
    assert r.status == 400


async def test_create_validation(api: Api) -> None:
    campaign, node = await api.campaign_and_node()
    for body in ({}, {"campaign_id": campaign}, {"campaign_id": "x", "node_id": node}):
        r = await api.client.post(S, json=body, headers=api.h())
        assert r.status == 400, body
        assert set((await r.json())["error"]) >= {"code", "message"}
    r = await api.client.post(S, data=b"{not json", headers=api.h())
    assert r.status == 400
    r = await api.client.post(
        S, json={"campaign_id": str(uuid.uuid4()), "node_id": node}, headers=api.h()
    )
    assert r.status == 404
    r = await api.client.post(
        S, json={"campaign_id": campaign, "node_id": str(uuid.uuid4())}, headers=api.h()
    )
    assert r.status == 404


async def test_patch_semantics(api: Api) -> None:
    session = await api.session()
    url = f"{S}/{session['id']}"
    r = await api.client.patch(
        url, json={"title": "Intro", "draft_body": "Hi %first_name%"}, headers=api.h()
    )
    assert r.status == 200
    row = (await r.json())["session"]
    assert row["title"] == "Intro" and row["draft_body"] == "Hi %first_name%"
    assert row["draft_subject"] is None
    r = await api.client.patch(
        url,
        json={"generated_examples": [{"lead_id": "1", "subject": "s", "body": "b"}]},
        headers=api.h(),
    )
    assert (await r.json())["session"]["generated_examples"]
    # writing skeleton clears generated examples
    r = await api.client.patch(url, json={"skeleton": {"hook": "h"}}, headers=api.h())
    row = (await r.json())["session"]
    assert row["skeleton"] == {"hook": "h"} and row["generated_examples"] is None
    # unless the same body sets them
    r = await api.client.patch(
        url, json={"skeleton": {"hook": "x"}, "generated_examples": []}, headers=api.h()
    )
    assert (await r.json())["session"]["generated_examples"] == []
    # explicit null writes null; title untouched by other patches
    r = await api.client.patch(url, json={"draft_body": None}, headers=api.h())
    row = (await r.json())["session"]
    assert row["draft_body"] is None and row["title"] == "Intro"
    # unknown keys and wrong types are 400 and change nothing
    before = (await (await api.client.get(url, headers=api.h())).json())["session"]
    bad: object
    for bad in (
        {"nope": 1},
        {"title": 5},
        {"task_status": "running"},
        {"framework_version": "1"},
        {"framework_version": 2**60},
        [],
    ):
        r = await api.client.patch(url, json=bad, headers=api.h())
        assert r.status == 400, bad
    after = (await (await api.client.get(url, headers=api.h())).json())["session"]
    assert after == before


async def test_delete_is_a_tombstone(api: Api) -> None:
    session = await api.session()
    url = f"{S}/{session['id']}"
    r = await api.client.delete(url, headers=api.h())
    assert r.status == 200 and await r.json() == {"success": True}
    assert (await api.client.get(url, headers=api.h())).status == 404
    assert (await api.client.patch(url, json={"title": "x"}, headers=api.h())).status == 404
    r = await api.client.post(f"{url}/turn", json={"message": "hi"}, headers=api.h())
    assert r.status == 404
    r = await api.client.get(S, params={"campaign_id": session["campaign_id"]}, headers=api.h())
    assert (await r.json())["sessions"] == []


async def test_auth_required_and_ownership_matrix(api: Api) -> None:
    session = await api.session()
    sid = session["id"]
    campaign = session["campaign_id"]
    requests = [
        ("GET", f"{S}/{sid}", None),
        ("PATCH", f"{S}/{sid}", {"title": "x"}),
        ("DELETE", f"{S}/{sid}", None),
        ("POST", f"{S}/{sid}/turn", {"message": "hi"}),
        ("POST", f"{S}/{sid}/generate-examples", {"leads": [{"id": "1"}]}),
        ("GET", f"/api/campaigns/{campaign}", None),
        ("GET", f"/api/campaigns/{campaign}/nodes", None),
        ("POST", f"/api/campaigns/{campaign}/nodes", {"name": "n"}),
        ("DELETE", f"/api/campaigns/{campaign}", None),
        ("POST", S, {"campaign_id": campaign, "node_id": session["node_id"]}),
    ]
    for method, url, body in requests:
        r = await api.client.request(method, url, json=body)
        assert r.status == 401, (method, url)
        r = await api.client.request(
            method, url, json=body, headers={"Authorization": "Bearer sst_forged"}
        )
        assert r.status == 401, (method, url)
        r = await api.client.request(method, url, json=body, headers=api.h(api.token_b))
        assert r.status == 404, (method, url, await r.text())
    r = await api.client.get(S, params={"campaign_id": campaign}, headers=api.h(api.token_b))
    assert (await r.json())["sessions"] == []
    # and nothing changed for the owner
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    assert r.status == 200 and (await r.json())["session"] == session


async def test_body_size_limit(make_api: object) -> None:
    api: Api = await make_api(max_body_bytes=1024)  # type: ignore[operator]
    session = await api.session()
    r = await api.client.patch(f"{S}/{session['id']}", json={"title": "x" * 5000}, headers=api.h())
    assert r.status == 413
    assert (await r.json())["error"]["code"] == "payload_too_large"


async def test_concurrent_patches_all_land(api: Api) -> None:
    session = await api.session()
    url = f"{S}/{session['id']}"
    rs = await asyncio.gather(
        *[api.client.patch(url, json={"title": f"t{i}"}, headers=api.h()) for i in range(30)]
    )
    assert all(r.status == 200 for r in rs)
    r = await api.client.get(url, headers=api.h())
    assert r.headers["ETag"] == '"31"'
