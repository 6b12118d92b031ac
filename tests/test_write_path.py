"""The HTTP write path does each step once: no read of the session after the write."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sessionstream.server.keys import STORE
from tests.conftest import Api, ApiFactory

S = "/api/campaigns/ai-chat-sessions"


async def test_patch_reads_the_session_once_and_answers_what_it_wrote(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = await api.session()
    store = api.app[STORE]
    reads: list[tuple[str, str]] = []
    get_doc = store.get_doc

    async def counted(kind: str, key: str) -> Any:
        reads.append((kind, key))
        return await get_doc(kind, key)

    monkeypatch.setattr(store, "get_doc", counted)
    r = await api.client.patch(
        f"{S}/{session['id']}", json={"title": "once"}, headers={**api.h(), "If-Match": '"1"'}
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    # one read of each: the session the change is decided on, the usage the quota checks
    assert sorted(reads) == [("session", session["id"]), ("usage", api.user_a)]
    assert body["session"]["title"] == "once" and r.headers["ETag"] == '"2"'
    monkeypatch.undo()
    r = await api.client.get(f"{S}/{session['id']}", headers=api.h())
    assert await r.json() == body and r.headers["ETag"] == '"2"'


async def test_create_answers_from_the_append_and_a_retry_reads_back(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign, node = await api.campaign_and_node()
    store = api.app[STORE]
    reads: list[tuple[str, str]] = []
    get_doc = store.get_doc

    async def counted(kind: str, key: str) -> Any:
        reads.append((kind, key))
        return await get_doc(kind, key)

    monkeypatch.setattr(store, "get_doc", counted)
    headers = {**api.h(), "Idempotency-Key": "k1"}
    body = {"campaign_id": campaign, "node_id": node}
    first = await api.client.post(S, json=body, headers=headers)
    assert first.status == 201
    # the campaign the session joins, the usage the quota checks; the session is not read back
    assert sorted(reads) == [("campaign", campaign), ("usage", api.user_a)]
    again = await api.client.post(S, json=body, headers=headers)
    assert again.status == 201
    assert await again.json() == await first.json()


async def test_one_users_patches_commit_together_under_the_quota(make_api: ApiFactory) -> None:
    """The quota reserves and lets go before the append: a user's concurrent writes share
    a batch (holding the user's lock through the commit made each wait for the last fsync)."""
    api = await make_api(user_quota_bytes=10 * 1024 * 1024)
    sessions = [(await api.session())["id"] for _ in range(8)]
    store = api.app[STORE]
    sizes: list[int] = []
    write_batch = store._writer.write_batch

    def counted(batch: Any) -> Any:
        sizes.append(len(batch))
        return write_batch(batch)

    store._writer.write_batch = counted
    try:
        replies = await asyncio.gather(
            *(
                api.client.patch(f"{S}/{sid}", json={"title": f"t{n}"}, headers=api.h())
                for n, sid in enumerate(sessions)
            )
        )
    finally:
        store._writer.write_batch = write_batch
    assert [r.status for r in replies] == [200] * len(sessions)
    assert sum(sizes) == len(sessions) and max(sizes) > 1, sizes
