"""Shared fixtures: a real app on a temporary SQLite file, two users, helpers."""

from __future__ import annotations

import ast
import functools
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sessionstream.core.settings import Settings
from sessionstream.server.app import create_app
from sessionstream.server.keys import STORE
from sessionstream.services.accounts import create_user, hash_token, token_ref

ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def test_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "db_path": str(tmp_path / "test.db"),
        "secret": "test-secret-0123456789abcdef0123456789",
        "offline_pace_ms": 0.0,
        "rate_limit": 0.0,
        "auth_failure_rate": 0.0,
        "delta_coalesce_ms": 5.0,
        # tests compare the exact frames a channel sends; the heartbeat has its own tests
        # (tests/supervision/), which set its interval, so a slow run on a loaded
        # machine never meets one it did not ask for
        "delivery_heartbeat_s": 3600.0,
    }
    base.update(overrides)
    return Settings(**base)


@dataclass
class Api:
    client: TestClient[Any, Any]
    app: web.Application
    token_a: str
    token_b: str
    user_a: str
    user_b: str

    def h(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token_a}"}

    def ref(self, token: str | None = None) -> str:
        """What a run token minted with ``token`` (alice's by default) names it by."""
        return token_ref(hash_token(token or self.token_a))

    async def campaign_and_node(self, token: str | None = None) -> tuple[str, str]:
        r = await self.client.post("/api/campaigns", json={"name": "Q3"}, headers=self.h(token))
        assert r.status == 201, await r.text()
        campaign = (await r.json())["campaign"]["id"]
        r = await self.client.post(
            f"/api/campaigns/{campaign}/nodes", json={"name": "intro"}, headers=self.h(token)
        )
        assert r.status == 201, await r.text()
        return campaign, (await r.json())["node"]["id"]

    async def session(self, token: str | None = None) -> dict[str, Any]:
        campaign, node = await self.campaign_and_node(token)
        r = await self.client.post(
            "/api/campaigns/ai-chat-sessions",
            json={"campaign_id": campaign, "node_id": node},
            headers=self.h(token),
        )
        assert r.status == 201, await r.text()
        session: dict[str, Any] = (await r.json())["session"]
        return session


ApiFactory = Callable[..., Any]


def _parse_again_on_gh_106905(parse: Callable[..., Any]) -> Callable[..., Any]:
    """``ast.parse`` that parses once more after CPython's spurious "AST constructor recursion
    depth mismatch" (python/cpython#106905, fixed in 3.11.8): the converter's depth counter is
    per interpreter, so a collection or another thread converting meanwhile throws it off.
    Hypothesis parses lambdas to describe strategies, and this failed the fuzz test on CI
    twice. The counter starts afresh at every call, so the second parse is the real answer;
    any other error is raised as it was."""

    @functools.wraps(parse)
    def parsed(*args: Any, **kwargs: Any) -> Any:
        try:
            return parse(*args, **kwargs)
        except SystemError as exc:
            if "AST constructor recursion depth mismatch" not in str(exc):
                raise
            return parse(*args, **kwargs)

    return parsed


if sys.version_info < (3, 11, 8):
    ast.parse = _parse_again_on_gh_106905(ast.parse)


@pytest.fixture
async def make_api(tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[Callable[..., Any]]:
    async def factory(**kwargs: Any) -> Api:
        engine = kwargs.pop("engine", None)
        settings = test_settings(tmp_path, **kwargs)
        app = create_app(settings, engine=engine)
        client = await aiohttp_client(app)
        store = app[STORE]
        user_a, token_a = await create_user(store, "alice")
        user_b, token_b = await create_user(store, "bob")
        return Api(client, app, token_a, token_b, user_a, user_b)

    yield factory


@pytest.fixture
async def api(make_api: Callable[..., Any]) -> Api:
    result: Api = await make_api()
    return result
