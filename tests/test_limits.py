"""Rate limiting per token, input limits, and refusals that change nothing."""

from __future__ import annotations

from typing import Any

from sessionstream.server.keys import STORE
from tests.conftest import Api

S = "/api/campaigns/ai-chat-sessions"


async def test_rate_limit_per_token_with_retry_after(make_api: Any) -> None:
    api: Api = await make_api(rate_limit=5.0, rate_burst=5)
    statuses = [(await api.client.get("/api/campaigns", headers=api.h())).status for _ in range(8)]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    r = await api.client.get("/api/campaigns", headers=api.h())
    assert r.status == 429
    assert int(r.headers["Retry-After"]) >= 1
    assert (await r.json())["error"]["code"] == "rate_limited"
    # another token has its own bucket
    r = await api.client.get("/api/campaigns", headers=api.h(api.token_b))
    assert r.status == 200


async def test_bad_inputs_are_4xx_and_change_nothing(make_api: Any) -> None:
    api: Api = await make_api(max_message_chars=100, max_leads=3)
    session = await api.session()
    sid = session["id"]
    store = api.app[STORE]
    head = await store.head_position()
    deep: Any = "x"
    for _ in range(200):
        deep = {"a": deep}
    bad = [
        ("PATCH", f"{S}/{sid}", b'{"title": "\xff\xfe"}'),
        ("PATCH", f"{S}/{sid}", b"[" * 5000 + b"]" * 5000),
        ("PATCH", f"{S}/{sid}", {"skeleton": deep}),
        ("POST", f"{S}/{sid}/turn", {"message": "x" * 101}),
        ("POST", f"{S}/{sid}/turn", {"message": ""}),
        ("POST", f"{S}/{sid}/turn", {"message": 5}),
        ("POST", f"{S}/{sid}/turn", {"message": "ok", "sampleLeads": "nope"}),
        ("POST", f"{S}/{sid}/generate-examples", {"leads": []}),
        ("POST", f"{S}/{sid}/generate-examples", {"leads": [{"id": str(i)} for i in range(4)]}),
        ("POST", f"{S}/{sid}/generate-examples", {"leads": [{"first_name": "no id"}]}),
        ("POST", f"{S}/not-a-uuid/turn", {"message": "hi"}),
        ("POST", S, "just a string"),
        ("POST", S, b""),
    ]
    for method, url, body in bad:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
        r = await api.client.request(method, url, headers=api.h(), **kwargs)
        assert 400 <= r.status < 500, (method, url, r.status)
        error = (await r.json())["error"]
        assert error["code"] and error["message"], error
    assert await store.head_position() == head


async def test_runs_waiting_beyond_the_queue_limit_get_503_and_change_nothing(
    make_api: Any,
) -> None:
    import asyncio

    from tests.scripted_engine import ScriptedEngine

    gate = asyncio.Event()
    api: Api = await make_api(
        engine=ScriptedEngine(words=3, gate=gate), max_concurrent_runs=1, max_queued_runs=1
    )
    running, waiting, refused = (await api.session(), await api.session(), await api.session())
    for session in (running, waiting):
        r = await api.client.post(
            f"{S}/{session['id']}/turn", json={"message": "hi"}, headers=api.h()
        )
        assert r.status == 200, await r.text()
    await asyncio.sleep(0.05)
    store = api.app[STORE]
    head = await store.head_position()
    r = await api.client.post(f"{S}/{refused['id']}/turn", json={"message": "hi"}, headers=api.h())
    assert r.status == 503
    assert (await r.json())["error"]["code"] == "overloaded"
    assert int(r.headers["Retry-After"]) >= 1
    assert await store.head_position() == head
    row = await (await api.client.get(f"{S}/{refused['id']}", headers=api.h())).json()
    assert row["session"]["task_status"] is None
    metrics = await (await api.client.get("/metrics")).text()
    assert 'sessionstream_overloaded_total{queue="runs"} 1.0' in metrics
    assert 'sessionstream_overloaded_total{queue="appends"} 0.0' in metrics
    gate.set()


async def test_appends_waiting_beyond_the_writer_queue_limit_are_refused() -> None:
    import asyncio

    from sessionstream.core.errors import Overloaded
    from sessionstream.eventstore.groupcommit import GroupCommit
    from sessionstream.eventstore.model import AppendRequest, NewEvent

    commits = GroupCommit(max_batch=10, max_pending=2)
    request = [AppendRequest("s-1", (NewEvent("t", {}, {}),))]
    waiting = [asyncio.ensure_future(commits.submit(request)) for _ in range(2)]
    await asyncio.sleep(0)
    try:
        await commits.submit(request)
    except Overloaded as exc:
        assert exc.status == 503 and "2 appends" in exc.message
    else:
        raise AssertionError("a third pending append must be refused")
    batch = await commits.next_batch()
    assert len(batch) == 2
    commits.fail(batch, Overloaded("test over"))
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, Overloaded) for o in outcomes)
