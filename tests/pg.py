"""The test PostgreSQL server: where it is, and throwaway schemas on it.

Without a reachable server the PostgreSQL tests skip, except with
``CI=true``, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sessionstream.eventstore.postgres import PostgresEventStore

DSN = os.environ.get("SESSIONSTREAM_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


#: the documented session API's collection
SESSIONS = "/api/campaigns/ai-chat-sessions"


def unavailable(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run)")
    pytest.skip(reason)


async def require_postgres() -> None:
    try:
        import asyncpg
    except ImportError as exc:
        unavailable(f"asyncpg cannot be imported: {exc}")
    try:
        conn = await asyncpg.connect(DSN, timeout=3)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL is not reachable at {DSN}: {exc}")
    await conn.close()


async def throwaway_schema(prefix: str) -> AsyncIterator[str]:
    """A fresh schema name on a reachable server, dropped (with everything in it) after."""
    import asyncpg

    await require_postgres()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(DSN, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


StoreFactory = Callable[..., Awaitable["PostgresEventStore"]]


async def node_opener(
    schema: str, pool_size: int, prepare: Callable[[PostgresEventStore], None] | None = None
) -> AsyncIterator[StoreFactory]:
    """Opens store instances on ``schema``, each standing in for one node; closes them all after.

    ``prepare`` tunes a store before it opens (e.g. a shorter supervisor back-off).
    """
    from sessionstream import projections
    from sessionstream.eventstore.postgres import PostgresEventStore

    opened: list[PostgresEventStore] = []

    async def open_node(**kwargs: Any) -> PostgresEventStore:
        kwargs.setdefault("pool_size", pool_size)
        store = PostgresEventStore(DSN, projections.ALL, schema=schema, **kwargs)
        if prepare is not None:
            prepare(store)
        await store.open()
        opened.append(store)
        return store

    yield open_node
    for store in opened:
        await store.close()


def url_with_schema(schema: str) -> str:
    """A URL whose ``search_path`` puts everything sessionstream makes in ``schema``."""
    return f"{DSN}{'&' if '?' in DSN else '?'}search_path={schema}"


async def served_session(
    schema: str, tmp_path: Path, aiohttp_client: Any, **settings: Any
) -> tuple[Any, dict[str, str], str]:
    """A server on ``schema`` with user alice and one session of hers: the client, her
    auth header and the session's id (what the PostgreSQL error tests drive requests at)."""
    from sessionstream.server.app import create_app
    from sessionstream.server.keys import STORE
    from sessionstream.services.accounts import create_user
    from tests import conftest

    app = create_app(
        conftest.test_settings(
            tmp_path, database_url=url_with_schema(schema), token_cache_s=60.0, **settings
        )
    )
    client = await aiohttp_client(app)
    _user, token = await create_user(app[STORE], "alice")
    h = {"Authorization": f"Bearer {token}"}
    r = await client.post("/api/campaigns", json={"name": "Q3"}, headers=h)
    campaign = (await r.json())["campaign"]["id"]
    r = await client.post(f"/api/campaigns/{campaign}/nodes", json={"name": "n"}, headers=h)
    node = (await r.json())["node"]["id"]
    r = await client.post(SESSIONS, json={"campaign_id": campaign, "node_id": node}, headers=h)
    assert r.status == 201, await r.text()
    return client, h, (await r.json())["session"]["id"]
