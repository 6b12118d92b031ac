"""One store contract, every backend: the ``store_factory`` fixture.

As in pyeventsourcing's ``tests/persistence.py``, the contract is written once
(``test_store_contract.py``) and each backend joins it with a few lines here.
A test calls ``await store_factory(**kwargs)`` to open a store; every call in
one test opens a store on the same throwaway database (a temporary SQLite
file, or a fresh PostgreSQL schema that is dropped afterwards), so a test can
reopen a store or, on PostgreSQL, run several nodes side by side.

PostgreSQL is skipped only off CI, when ``eventstore.postgres`` cannot be
imported or the server does not answer; with ``CI=true`` that is a failure.
"""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sessionstream import projections
from sessionstream.eventstore import merkle
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.verify import verify_store
from tests.pg import DSN, throwaway_schema, unavailable


async def raw_rows(store: EventStore, backend: str, sql: str) -> list[Any]:
    """The rows of one SQL statement run on the store's own tables, under the store's
    back (what a test looks at or tampers with at rest), on either backend."""
    if backend == "sqlite":
        conn = sqlite3.connect(store.path, isolation_level=None)  # type: ignore[attr-defined]
        try:
            return [tuple(r) for r in conn.execute(sql)]
        finally:
            conn.close()
    return [tuple(r) for r in await store._reader.fetch(sql)]  # type: ignore[attr-defined]


async def read_in_pages(store: EventStore, limit: int) -> list[RecordedEvent]:
    """The whole log read a page of ``limit`` at a time, as a catching-up reader does."""
    paged: list[RecordedEvent] = []
    while page := await store.read_all(paged[-1].position if paged else 0, limit=limit):
        paged.extend(page)
    return paged


async def assert_proven(store: EventStore, log: list[RecordedEvent]) -> None:
    """What an auditor checks still holds over ``log`` (the whole log, as appended): the
    chains, positions and read models (``verify``), and the Merkle tree's root over it."""
    report = await verify_store(store)
    assert report.ok, report.problems
    size = await store.head_position()
    assert len(log) == size
    assert await store.tree.integrate() == size
    assert await store.tree.root(size) == merkle.root_of([merkle.event_leaf(e.hash) for e in log])


class StoreFactory:
    """Opens stores of one backend on one test database; closes them at teardown."""

    def __init__(self, backend: str, open_store: Callable[..., Awaitable[EventStore]]) -> None:
        self.backend = backend
        self._open_store = open_store
        self.opened: list[EventStore] = []

    @property
    def multi_node(self) -> bool:
        """Whether several store instances may write the same log at once."""
        return self.backend == "postgres"

    async def __call__(self, **kwargs: Any) -> EventStore:
        kwargs.setdefault("projections", projections.ALL)
        store = await self._open_store(**kwargs)
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in reversed(self.opened):
            await store.close()
        self.opened.clear()


async def _postgres_factory() -> AsyncIterator[StoreFactory]:
    try:
        postgres = importlib.import_module("sessionstream.eventstore.postgres")
    except ImportError as exc:
        unavailable(f"eventstore.postgres cannot be imported: {exc}")
    async for schema in throwaway_schema("t"):

        async def open_store(schema: str = schema, **kwargs: Any) -> EventStore:
            kwargs.setdefault("pool_size", 4)
            store: EventStore = postgres.PostgresEventStore(DSN, schema=schema, **kwargs)
            await store.open()
            return store

        factory = StoreFactory("postgres", open_store)
        try:
            yield factory
        finally:
            await factory.close_all()


async def _sqlite_factory(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    path = tmp_path / "contract.db"

    async def open_store(**kwargs: Any) -> EventStore:
        store = SQLiteEventStore(path, **kwargs)
        await store.open()
        return store

    factory = StoreFactory("sqlite", open_store)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest.fixture(params=["sqlite", "postgres"])
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[StoreFactory]:
    if request.param == "sqlite":
        async for factory in _sqlite_factory(tmp_path):
            yield factory
    else:
        async for factory in _postgres_factory():
            yield factory


@pytest.fixture
async def store(store_factory: StoreFactory) -> EventStore:
    """A store with every projection and default settings."""
    return await store_factory()
