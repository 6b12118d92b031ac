"""The stores the supervision tests inject crashes into: tasks back off for 10 ms."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sessionstream import projections
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.sqlite import SQLiteEventStore
from tests.pg import node_opener, throwaway_schema

StoreFactory = Callable[..., Awaitable[EventStore]]


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    store = SQLiteEventStore(tmp_path / "log.db", projections.ALL)
    store.supervisor.backoff_initial_s = 0.01
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_sup"):
        yield name


def _quick_restarts(store: EventStore) -> None:
    store.supervisor.backoff_initial_s = 0.01


@pytest.fixture
async def pg_nodes(pg_schema: str) -> AsyncIterator[StoreFactory]:
    async for open_node in node_opener(pg_schema, pool_size=3, prepare=_quick_restarts):
        yield open_node
