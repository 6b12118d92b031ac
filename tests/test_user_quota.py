"""The per-user storage quota: the ``usage`` read model counts what a user's requests
stored, and a write that would pass ``SESSIONSTREAM_USER_QUOTA_BYTES`` is a 413
``quota_exceeded`` with nothing written (``services/quota.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

from sessionstream.core.vocabulary import session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import stored_bytes
from sessionstream.projections.usage import user_of
from sessionstream.server.keys import STORE
from tests.conftest import Api, ApiFactory

S = "/api/campaigns/ai-chat-sessions"
KB = 1024


async def usage(store: EventStore, user_id: str) -> int:
    doc = await store.get_doc("usage", user_id)
    return int(doc.body["bytes"]) if doc is not None else 0


async def counted_from_the_log(store: EventStore, user_id: str) -> int:
    """The user's bytes recounted from every event in the log, independently of the fold."""
    total, after = 0, 0
    while page := await store.read_all(after, limit=500):
        total += sum(stored_bytes(e) for e in page if user_of(e.metadata) == user_id)
        after = page[-1].position
    return total


async def patch(api: Api, sid: str, body: Any, token: str | None = None) -> tuple[int, Any]:
    r = await api.client.patch(f"{S}/{sid}", json=body, headers=api.h(token))
    return r.status, await r.json()


async def test_usage_is_what_the_users_requests_stored_and_rebuilds_to_itself(
    api: Api,
) -> None:
    store = api.app[STORE]
    sid = (await api.session())["id"]
    for n in (100, 5000, 20):
        assert (await patch(api, sid, {"title": "x" * n}))[0] == 200
    await api.session(api.token_b)
    used_a, used_b = await usage(store, api.user_a), await usage(store, api.user_b)
    assert used_a == await counted_from_the_log(store, api.user_a) and used_a > 5000
    assert used_b == await counted_from_the_log(store, api.user_b) and 0 < used_b < used_a
    await store.rebuild()
    assert await usage(store, api.user_a) == used_a
    assert await usage(store, api.user_b) == used_b


async def test_a_write_past_the_quota_is_413_and_writes_nothing(make_api: ApiFactory) -> None:
    api = await make_api(user_quota_bytes=20 * KB)
    store = api.app[STORE]
    sid = (await api.session())["id"]
    bob = (await api.session(api.token_b))["id"]
    assert (await patch(api, sid, {"title": "a" * (10 * KB)}))[0] == 200
    used = await usage(store, api.user_a)
    version = await store.stream_version(session_stream(sid))

    status, body = await patch(api, sid, {"draft_body": "b" * (12 * KB)})
    assert status == 413, body
    error = body["error"]
    assert error["code"] == "quota_exceeded"
    assert error["details"]["used"] == used and error["details"]["quota"] == 20 * KB
    assert used + error["details"]["needed"] > 20 * KB
    assert await store.stream_version(session_stream(sid)) == version
    assert await usage(store, api.user_a) == used
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    assert (await r.json())["session"]["draft_body"] is None

    # a smaller write still fits, and another user's quota is their own
    assert (await patch(api, sid, {"draft_body": "b" * KB}))[0] == 200
    assert (await patch(api, bob, {"draft_body": "b" * (12 * KB)}, api.token_b))[0] == 200


async def test_racing_writes_never_take_a_user_past_the_quota(make_api: ApiFactory) -> None:
    api = await make_api(user_quota_bytes=40 * KB)
    store = api.app[STORE]
    sid = (await api.session())["id"]
    room = 40 * KB - await usage(store, api.user_a)
    each = 4 * KB  # each fits alone; together ten would need about 41 KB more
    results = await asyncio.gather(*(patch(api, sid, {"title": str(i) * each}) for i in range(10)))
    statuses = sorted(status for status, _ in results)
    assert set(statuses) == {200, 413}, statuses
    assert await usage(store, api.user_a) <= 40 * KB
    assert statuses.count(200) <= room // each


async def test_a_rollback_reappends_and_counts(make_api: ApiFactory) -> None:
    api = await make_api(user_quota_bytes=25 * KB)
    store = api.app[STORE]
    sid = (await api.session())["id"]
    old = {"draft_subject": "s", "draft_body": "z" * (9 * KB)}
    assert (await patch(api, sid, {"draft_history": [old]}))[0] == 200
    used = await usage(store, api.user_a)

    async def roll_back() -> int:
        r = await api.client.post(f"{S}/{sid}/draft/rollback", json={"index": 0}, headers=api.h())
        if r.status == 413:
            assert (await r.json())["error"]["code"] == "quota_exceeded"
        status: int = r.status
        return status

    assert await roll_back() == 200  # the 9 KB draft is appended again, and counted
    assert await usage(store, api.user_a) > used + 9 * KB
    assert await roll_back() == 413
    assert await usage(store, api.user_a) <= 25 * KB


async def test_zero_turns_the_quota_off(make_api: ApiFactory) -> None:
    api = await make_api(user_quota_bytes=0)
    sid = (await api.session())["id"]
    for _ in range(3):
        assert (await patch(api, sid, {"title": "q" * 90_000}))[0] == 200
