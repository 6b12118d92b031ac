"""The HTTP write path does each step once: no read of the session after the write."""

from __future__ import annotations

from typing import Any

import pytest

from sessionstream.server.keys import STORE
from tests.conftest import Api

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
    assert reads == [("session", session["id"])], "one read: the one the change is decided on"
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
    assert reads == [("campaign", campaign)], "the session is not read back after its creation"
    again = await api.client.post(S, json=body, headers=headers)
    assert again.status == 201
    assert await again.json() == await first.json()
