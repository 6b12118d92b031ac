"""No background task dies silently (issue 23).

For each background task an unexpected exception (a ``RuntimeError``, never a
``SessionStreamError``) is injected once: it must be logged with its
traceback, counted in ``/metrics`` and recovered from, and every subscriber
must still get every event exactly once. A node whose pump cannot restart
answers 503 on ``/healthz`` and names it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sessionstream import projections
from sessionstream.core.supervisor import Supervisor
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.hub import _Listener
from sessionstream.eventstore.model import NewEvent, RecordedEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from tests.pg import DSN, throwaway_schema

StoreFactory = Callable[..., Awaitable[EventStore]]


class Once:
    """A replacement that raises ``RuntimeError`` on its ``nth`` call, else calls ``real``."""

    def __init__(self, real: Callable[..., Any], nth: int = 1) -> None:
        self.real = real
        self.nth = nth
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.nth:
            raise RuntimeError("injected: cannot switch to state 15")
        return self.real(*args, **kwargs)


class Always:
    """A replacement that always raises (a task that can never restart)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise RuntimeError("injected: broken for good")


class Subscriber:
    """Collects everything a subscription delivers, in a task of its own."""

    def __init__(self, store: EventStore, after: int, keys: frozenset[str] | None = None) -> None:
        self.events: list[RecordedEvent] = []
        self.subscription = store.subscribe(after, keys=keys)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.subscription:
            self.events.append(event)

    async def until(self, count: int, within: float = 15.0) -> list[RecordedEvent]:
        deadline = time.monotonic() + within
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"got {len(self.events)} of {count} events"
            await asyncio.sleep(0.01)
        return self.events

    async def stop(self) -> None:
        self.subscription.close()
        await asyncio.wait_for(self.task, 5)


def exactly_once(got: list[RecordedEvent], appended: list[RecordedEvent]) -> None:
    """Every appended event, once, in position order (and nothing else)."""
    assert [e.position for e in got] == [e.position for e in appended]
    assert [e.event_id for e in got] == [e.event_id for e in appended]


def crash_logged(caplog: pytest.LogCaptureFixture, task: str) -> None:
    records = [
        r
        for r in caplog.records
        if r.name == "sessionstream.supervisor" and f"task {task} crashed" in r.getMessage()
    ]
    assert records, f"no crash of {task} was logged"
    assert records[0].levelno == logging.ERROR
    exc_info = records[0].exc_info
    assert exc_info is not None and isinstance(exc_info[1], RuntimeError)
    assert records[0].exc_text or exc_info[2] is not None  # the traceback travels with it


async def append_some(store: EventStore, count: int, stream: str = "s-1") -> list[RecordedEvent]:
    """``count`` appends, several in flight at once (so some share a batch)."""

    async def one(i: int) -> RecordedEvent:
        result = await store.append(stream, [NewEvent("thing.happened", {"i": i})])
        return result.events[0]

    done = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 15)
    return sorted(done, key=lambda e: e.position)


async def wait_for(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# the supervisor itself -------------------------------------------------------------------------
async def test_a_crashing_body_is_restarted_with_backoff_and_reported_only_past_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor(restart_bound_s=0.3, backoff_initial_s=0.01, backoff_max_s=0.05)
    runs: list[float] = []

    async def body() -> None:
        runs.append(time.monotonic())
        raise RuntimeError("injected")

    task = supervisor.spawn("broken", body)
    try:
        await wait_for(lambda: len(runs) >= 3)
        assert supervisor.crashes["broken"] >= 2
        assert supervisor.down("broken") is not None
        assert supervisor.unhealthy() == {}  # within its bound: restarting, not yet unhealthy
        await wait_for(lambda: bool(supervisor.unhealthy()), within=5)
        assert list(supervisor.unhealthy()) == ["broken"]
        gaps = [b - a for a, b in itertools.pairwise(runs)]
        assert gaps[0] >= 0.009 and max(gaps) < 0.2  # backed off, capped
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert "broken" not in supervisor.tasks  # a cancelled task leaves the health table
    crash_logged(caplog, "broken")


async def test_a_task_that_recovers_is_healthy_again() -> None:
    supervisor = Supervisor(restart_bound_s=0.2, backoff_initial_s=0.01, settle_s=0.1)
    calls = 0

    async def body() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected")
        await asyncio.sleep(3600)

    task = supervisor.spawn("flaky", body)
    try:
        await wait_for(lambda: calls == 2)
        await asyncio.sleep(0.4)  # past both the settle time and the bound
        assert supervisor.down("flaky") is None and supervisor.unhealthy() == {}
        assert supervisor.crashes == {"flaky": 1}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# the SQLite writer (and the hub it publishes to) ------------------------------------------------
@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    store = SQLiteEventStore(tmp_path / "log.db", projections.ALL)
    store.supervisor.backoff_initial_s = 0.01
    await store.open()
    yield store
    await store.close()


async def test_the_sqlite_writer_crashing_after_a_commit_answers_and_delivers_everything(
    sqlite_store: SQLiteEventStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = sqlite_store
    subscribers = [Subscriber(store, 0), Subscriber(store, 0, frozenset({"s-1"}))]
    before = await append_some(store, 3)
    await subscribers[0].until(3)
    # committed, then the writer dies before its callers or the hub hear of it
    monkeypatch.setattr(store._reader.cache, "put_all", Once(store._reader.cache.put_all))
    after = await append_some(store, 10)
    assert store.supervisor.crashes["sqlite-writer"] == 1
    appended = before + after
    for sub in subscribers:
        exactly_once(await sub.until(len(appended)), appended)
    more = await append_some(store, 3)  # and it keeps writing
    for sub in subscribers:
        exactly_once(await sub.until(16), appended + more)
        await sub.stop()
    crash_logged(caplog, "sqlite-writer")


async def test_a_hub_push_that_raises_is_published_again_to_everyone(
    sqlite_store: SQLiteEventStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = sqlite_store
    subscribers = [Subscriber(store, 0) for _ in range(3)]
    first = await append_some(store, 2)
    for sub in subscribers:
        await sub.until(2)
    once = Once(_Listener.push, nth=2)  # the second listener of an event: mid-publish

    def push(listener: _Listener, event: RecordedEvent) -> None:
        once(listener, event)

    monkeypatch.setattr(_Listener, "push", push)
    after = await append_some(store, 8)
    assert store.supervisor.crashes["sqlite-writer"] == 1
    for sub in subscribers:
        exactly_once(await sub.until(10), first + after)
        await sub.stop()
    crash_logged(caplog, "sqlite-writer")


# PostgreSQL: the writer, the pump, and /healthz ------------------------------------------------
@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_sup"):
        yield name


@pytest.fixture
async def pg_nodes(pg_schema: str) -> AsyncIterator[StoreFactory]:
    from sessionstream.eventstore.postgres import PostgresEventStore

    opened: list[EventStore] = []

    async def open_node() -> EventStore:
        store = PostgresEventStore(DSN, projections.ALL, schema=pg_schema, pool_size=3)
        store.supervisor.backoff_initial_s = 0.01
        await store.open()
        opened.append(store)
        return store

    yield open_node
    for store in opened:
        await store.close()


@pytest.mark.postgres
async def test_the_pg_writer_crashing_after_a_commit_answers_and_delivers_everything(
    pg_nodes: StoreFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sessionstream.eventstore.postgres import PostgresEventStore

    store = await pg_nodes()
    assert isinstance(store, PostgresEventStore)
    subscribers = [Subscriber(store, 0), Subscriber(store, 0, frozenset({"s-1"}))]
    before = await append_some(store, 3)
    monkeypatch.setattr(store.pump, "committed", Once(store.pump.committed))
    after = await append_some(store, 10)
    assert store.supervisor.crashes["pg-writer"] == 1
    appended = before + after
    for sub in subscribers:
        exactly_once(await sub.until(len(appended)), appended)
        await sub.stop()
    crash_logged(caplog, "pg-writer")


@pytest.mark.postgres
async def test_the_pg_pump_restarts_from_its_last_delivered_position(
    pg_nodes: StoreFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sessionstream.eventstore.postgres import PostgresEventStore

    here, there = await pg_nodes(), await pg_nodes()
    assert isinstance(here, PostgresEventStore)
    subscribers = [Subscriber(here, 0), Subscriber(here, 0, frozenset({"s-2"}))]
    first = await append_some(there, 4, "s-2")
    await subscribers[0].until(4)
    # the read of another node's events fails as the failover's untranslated error did
    monkeypatch.setattr(here.pump, "_read_after", Once(here.pump._read_after))
    mine, theirs = await asyncio.gather(append_some(here, 6, "s-2"), append_some(there, 6, "s-2"))
    appended = sorted(first + mine + theirs, key=lambda e: e.position)
    for sub in subscribers:
        exactly_once(await sub.until(len(appended)), appended)
        await sub.stop()
    assert here.supervisor.crashes["pg-pump"] == 1
    assert here.supervisor.unhealthy() == {}
    crash_logged(caplog, "pg-pump")


@pytest.mark.postgres
async def test_a_node_whose_pump_cannot_restart_is_unhealthy_and_names_it(
    pg_schema: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionstream.server.app import create_app
    from sessionstream.server.keys import STORE
    from tests.conftest import test_settings
    from tests.pg import url_with_schema

    settings = test_settings(
        tmp_path, database_url=url_with_schema(pg_schema), task_restart_bound_s=0.5
    )
    app = create_app(settings)
    client = await aiohttp_client(app)
    store = app[STORE]
    r = await client.get("/healthz")
    assert r.status == 200 and (await r.json())["status"] == "ok"

    broken = Always()
    monkeypatch.setattr(store.pump, "drain", broken)  # type: ignore[attr-defined]
    await store.append("s-3", [NewEvent("thing.happened", {})])
    await wait_for(lambda: broken.calls >= 2)
    r = await client.get("/healthz")  # restarting, within its bound
    assert r.status == 200 and (await r.json())["restarting"] == ["pg-pump"]
    deadline = time.monotonic() + 10
    while r.status == 200:
        assert time.monotonic() < deadline, "the node never said it was unhealthy"
        await asyncio.sleep(0.05)
        r = await client.get("/healthz")
    assert r.status == 503
    body = await r.json()
    assert body["status"] == "unhealthy" and list(body["failing"]) == ["pg-pump"]
    assert "pg-pump" in body["error"]["message"] and body["error"]["code"] == "unhealthy"
    metrics = await (await client.get("/metrics")).text()
    crashes = [line for line in metrics.splitlines() if line.startswith("sessionstream_task_crash")]
    assert any('task="pg-pump"' in line and float(line.split()[-1]) >= 2 for line in crashes)
    assert 'sessionstream_task_down{task="pg-pump"} 1.0' in metrics

    monkeypatch.undo()  # the fault clears: the pump comes back and so does the node
    await wait_for(lambda: store.supervisor.unhealthy() == {}, within=15)
    r = await client.get("/healthz")
    assert r.status == 200
