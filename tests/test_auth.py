"""API tokens: guessing is slowed per address, resolved tokens are cached, revocation works."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sessionstream.server.auth import bearer_token
from sessionstream.server.keys import STORE
from sessionstream.services.accounts import new_api_token, revoke_token
from tests import serverproc
from tests.conftest import Api
from tests.test_realtime import start_turn


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("Bearer {t}", True),
        ("bearer {t}", True),  # the scheme name is case-insensitive (RFC 9110)
        ("BEARER  {t} ", True),
        ("Basic {t}", False),
        ("{t}", False),
        ("Bearer", False),
    ],
)
def test_bearer_token_parsing(header: str, accepted: bool) -> None:
    token = new_api_token()
    assert bearer_token(header.format(t=token)) == (token if accepted else "")


async def test_a_lower_case_bearer_scheme_is_accepted_everywhere(make_api: Any) -> None:
    api: Api = await make_api()
    turn = await start_turn(api)
    lower = {"Authorization": f"bearer {api.token_a}"}
    r = await api.client.get(f"/api/campaigns/ai-chat-sessions/{turn.session_id}", headers=lower)
    assert r.status == 200
    async with api.client.ws_connect(f"/api/realtime/runs/{turn.run_id}", headers=lower) as ws:
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT
    r = await api.client.get(
        f"/realtime/v1/runs/{turn.run_id}", headers={"Authorization": f"bearer {turn.token}"}
    )
    assert r.status == 200


async def test_guessing_tokens_is_limited_per_address_not_per_guess(make_api: Any) -> None:
    api: Api = await make_api(auth_failure_rate=0.5, auth_failure_burst=5)
    statuses = []
    for _ in range(8):
        r = await api.client.get("/api/campaigns", headers=api.h(new_api_token()))
        statuses.append(r.status)
    # every guess is a new credential, yet the sixth is refused before any lookup
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    r = await api.client.get("/api/campaigns", headers=api.h(new_api_token()))
    body = await r.json()
    assert (
        body["error"]["code"] == "rate_limited"
        and "failed authentications" in (body["error"]["message"])
    )
    assert int(r.headers["Retry-After"]) >= 1
    # a realtime channel from the same address is refused the same way
    r = await api.client.get(f"/api/realtime/runs/run_x?token={new_api_token()}")
    assert r.status == 429


async def test_guessing_over_websockets_spends_the_same_bucket(make_api: Any) -> None:
    """A websocket refusal is a close code sent after the upgrade; it still counts."""
    api: Api = await make_api(auth_failure_rate=0.5, auth_failure_burst=4)

    def guess() -> str:
        return f"/api/realtime/sessions/{uuid.uuid4()}?token={new_api_token()}"

    codes = []
    for _ in range(4):
        async with api.client.ws_connect(guess()) as ws:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.CLOSE
            codes.append(message.data)
    assert codes == [4401] * 4
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.client.ws_connect(
            f"/api/realtime/sessions/{uuid.uuid4()}?token={new_api_token()}"
        )
    assert refused.value.status == 429


async def test_a_recently_proven_token_still_works_beside_a_guesser(make_api: Any) -> None:
    api: Api = await make_api(auth_failure_rate=0.5, auth_failure_burst=3)
    assert (await api.client.get("/api/campaigns", headers=api.h())).status == 200
    for _ in range(5):
        await api.client.get("/api/campaigns", headers=api.h(new_api_token()))
    assert (await api.client.get("/api/campaigns", headers=api.h())).status == 200
    # a token not seen lately has to wait like the guesser (same address)
    assert (await api.client.get("/api/campaigns", headers=api.h(api.token_b))).status == 429


async def test_a_revoked_token_stops_working_within_the_cache_lifetime(make_api: Any) -> None:
    api: Api = await make_api(token_cache_s=0.3)
    assert (await api.client.get("/api/campaigns", headers=api.h())).status == 200
    await revoke_token(api.app[STORE], api.token_a)
    await asyncio.sleep(0.4)
    r = await api.client.get("/api/campaigns", headers=api.h())
    assert r.status == 401
    assert (await r.json())["error"]["code"] == "unauthorized"
    assert (await api.client.get("/api/campaigns", headers=api.h(api.token_b))).status == 200


async def test_without_a_cache_revocation_is_immediate(make_api: Any) -> None:
    api: Api = await make_api(token_cache_s=0)
    assert (await api.client.get("/api/campaigns", headers=api.h())).status == 200
    await revoke_token(api.app[STORE], api.token_a)
    assert (await api.client.get("/api/campaigns", headers=api.h())).status == 401


def test_cli_issues_and_revokes_tokens(tmp_path: Path) -> None:
    store = ["--db", str(tmp_path / "cli.db")]
    out = serverproc.cli(["users", "create", "carol", *store])
    first = out.strip().splitlines()[-1]
    user_id = out.split("(")[1].split(")")[0]
    second = serverproc.cli(["users", "token", user_id, *store]).strip().splitlines()[-1]
    assert second.startswith("sst_") and second != first
    (row,) = serverproc.cli(["users", "list", *store]).strip().splitlines()[1:]
    assert row.split()[0] == user_id and row.split()[1] == "2" and row.endswith("carol")
    assert "revoked" in serverproc.cli(["users", "revoke", first, *store])
    try:
        serverproc.cli(["users", "revoke", first, *store])
    except RuntimeError as exc:
        assert "no such active token" in str(exc)
    else:
        raise AssertionError("revoking twice must fail")
    assert serverproc.cli(["users", "list", *store]).strip().splitlines()[1].split()[1] == "1"
    server = serverproc.ServerProcess(store).start()
    try:
        for token, status in ((first, 401), (second, 200)):
            code, _, _ = serverproc.call(server.base_url, token, "GET", "/api/campaigns")
            assert code == status
    finally:
        server.stop()
