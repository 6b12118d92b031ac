"""The bounds of a session PATCH (``server/bounds.py``): each refusal is a 400 naming the
field, and nothing is written; the bounds are settings, and the body limit is a 413."""

from __future__ import annotations

from typing import Any

from sessionstream.core.vocabulary import session_stream
from sessionstream.server.keys import STORE
from tests.conftest import Api, ApiFactory

S = "/api/campaigns/ai-chat-sessions"
ITEMS = 10_000  # the documented defaults (docs/reference/limits.md)
CHARS = 1_000_000


async def refused(api: Api, sid: str, body: Any, status: int = 400) -> dict[str, Any]:
    """PATCH ``body``, expect ``status``, and check that nothing was appended."""
    store = api.app[STORE]
    before = await store.stream_version(session_stream(sid))
    r = await api.client.patch(f"{S}/{sid}", json=body, headers=api.h())
    assert r.status == status, await r.text()
    error: dict[str, Any] = (await r.json())["error"]
    assert await store.stream_version(session_stream(sid)) == before
    return error


async def test_a_list_over_the_item_bound_is_refused_at_any_depth(api: Api) -> None:
    sid = (await api.session())["id"]
    error = await refused(api, sid, {"skeleton_history": [{}] * (ITEMS + 1)})
    assert error["code"] == "validation_error"
    assert error["details"] == {"field": "skeleton_history", "limit": ITEMS}
    assert "10001 items" in error["message"]
    nested = {"skeleton": {"blocks": [{"items": list(range(ITEMS + 1))}]}}
    error = await refused(api, sid, nested)
    assert error["details"]["field"] == "skeleton.blocks[0].items"
    many_keys = {"skeleton": {f"k{i}": 1 for i in range(ITEMS + 1)}}
    assert (await refused(api, sid, many_keys))["details"]["field"] == "skeleton"


async def test_a_string_over_the_char_bound_is_refused(api: Api) -> None:
    sid = (await api.session())["id"]
    error = await refused(api, sid, {"title": "x" * (CHARS + 1)})
    assert error["details"] == {"field": "title", "limit": CHARS}
    message = {"messages": [{"role": "user", "content": "y" * (CHARS + 1)}]}
    assert (await refused(api, sid, message))["details"]["field"] == "messages[0].content"
    long_key = {"skeleton": {"k" * (CHARS + 1): 1}}
    assert (await refused(api, sid, long_key))["details"]["field"].startswith("skeleton.kkk")


async def test_values_at_the_bounds_are_stored(api: Api) -> None:
    sid = (await api.session())["id"]
    body = {"skeleton_history": [{}] * ITEMS, "title": "t" * CHARS}
    r = await api.client.patch(f"{S}/{sid}", json=body, headers=api.h())
    assert r.status == 200, await r.text()
    session = (await r.json())["session"]
    assert len(session["skeleton_history"]) == ITEMS and len(session["title"]) == CHARS


async def test_the_bounds_are_settings(make_api: ApiFactory) -> None:
    api = await make_api(patch_max_items=3, patch_max_chars=20)
    sid = (await api.session())["id"]
    assert (await refused(api, sid, {"draft_history": [{}] * 4}))["details"]["limit"] == 3
    assert (await refused(api, sid, {"draft_body": "b" * 21}))["details"]["limit"] == 20
    r = await api.client.patch(
        f"{S}/{sid}", json={"draft_history": [{}] * 3, "draft_body": "b" * 20}, headers=api.h()
    )
    assert r.status == 200, await r.text()


async def test_a_body_over_the_body_limit_is_413(make_api: ApiFactory) -> None:
    api = await make_api(max_body_bytes=1000)
    sid = (await api.session())["id"]
    error = await refused(api, sid, {"title": "x" * 2000}, status=413)
    assert error["code"] == "payload_too_large"


async def test_the_openapi_document_states_the_configured_bounds(make_api: ApiFactory) -> None:
    api = await make_api(patch_max_items=7, patch_max_chars=40)
    r = await api.client.get("/api/openapi.json")
    fields = (await r.json())["components"]["schemas"]["PatchSession"]["properties"]
    assert fields["skeleton_history"]["anyOf"][0]["maxItems"] == 7
    assert fields["skeleton"]["anyOf"][0]["maxProperties"] == 7
    assert fields["title"]["anyOf"][0]["maxLength"] == 40
