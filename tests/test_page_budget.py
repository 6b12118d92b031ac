"""Pages bounded in bytes over HTTP: the events endpoint and a channel's catch-up.

The store side is in ``tests/contract/test_store_pages.py``; here the budget
reaches the wire: a page of the events API stays inside it (one larger event
alone), ``next`` walks every event exactly once, and a websocket catching up
through budget-sized pages still sends every frame, in order.
"""

from __future__ import annotations

import json
from typing import Any

from sessionstream.core.vocabulary import session_stream
from sessionstream.server.frames import chat_stream_event
from sessionstream.server.keys import STORE
from tests.conftest import ApiFactory

S = "/api/campaigns/ai-chat-sessions"
BUDGET = 4096


async def patch_titles(api: Any, sid: str, sizes: list[int]) -> None:
    for n in sizes:
        r = await api.client.patch(f"{S}/{sid}", json={"title": "x" * n}, headers=api.h())
        assert r.status == 200, await r.text()


async def test_an_events_page_stays_inside_the_byte_budget(make_api: ApiFactory) -> None:
    api = await make_api(page_bytes=BUDGET)
    sid = (await api.session())["id"]
    await patch_titles(api, sid, [1000, 1000, 10_000, 500, 500, 500, 20_000, 10])
    stored = await api.app[STORE].read_all(0, keys=frozenset({session_stream(sid)}))

    got: list[dict[str, Any]] = []
    sizes: list[int] = []
    after = 0
    for _ in range(len(stored) + 2):
        r = await api.client.get(f"{S}/{sid}/events?after={after}&limit=100", headers=api.h())
        assert r.status == 200, await r.text()
        body = await r.json()
        page = body["events"]
        sizes.append(len(page))
        stored_bytes = sum(len(json.dumps(e["data"], separators=(",", ":"))) for e in page)
        assert len(page) == 1 or stored_bytes <= BUDGET, (len(page), stored_bytes)
        got.extend(page)
        if body["next"] is None:
            break
        after = body["next"]
    assert [e["position"] for e in got] == [e.position for e in stored]
    assert [e["data"] for e in got] == [e.data for e in stored]
    assert [e["hash"] for e in got] == [e.hash for e in stored]
    assert max(sizes) < 100 and len(sizes) > 3  # the budget cut pages, not the row limit


async def test_a_websocket_catches_up_through_byte_budget_pages(make_api: ApiFactory) -> None:
    api = await make_api(page_bytes=BUDGET)
    sid = (await api.session())["id"]
    await patch_titles(api, sid, [3000, 3000, 9000, 100, 100])
    stored = await api.app[STORE].read_all(0, keys=frozenset({session_stream(sid)}))
    ws = await api.client.ws_connect(f"/api/realtime/sessions/{sid}?token={api.token_a}")
    frames = [json.loads((await ws.receive(timeout=10)).data) for _ in stored]
    await ws.close()
    assert frames == [chat_stream_event(e) for e in stored]


async def test_a_list_page_stays_inside_the_byte_budget(make_api: ApiFactory) -> None:
    api = await make_api(page_bytes=BUDGET)
    campaign, node = await api.campaign_and_node()
    ids: list[str] = []
    for n in (10, 3000, 10, 10, 6000, 10):
        r = await api.client.post(
            S, json={"campaign_id": campaign, "node_id": node}, headers=api.h()
        )
        sid = (await r.json())["session"]["id"]
        ids.append(sid)
        await patch_titles(api, sid, [n])

    def listed(url: str) -> Any:
        return api.client.get(url, headers=api.h())

    got: list[str] = []
    sizes: list[int] = []
    after = ""
    for _ in range(len(ids) + 2):
        r = await listed(f"{S}?campaign_id={campaign}&limit=50{after}")
        assert r.status == 200, await r.text()
        body = await r.json()
        sizes.append(len(body["sessions"]))
        got += [s["id"] for s in body["sessions"]]
        if body["next"] is None:
            break
        after = f"&after={body['next']}"
    assert got == ids
    assert len(sizes) > 2 and max(sizes) < len(ids)  # cut by bytes, not by the limit
    r = await listed(f"{S}?campaign_id={campaign}")  # the whole list, streamed in chunks
    assert [s["id"] for s in (await r.json())["sessions"]] == ids
