"""The supervisor itself, and the store's tasks: the writers, the pump, checkpoints."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from sessionstream import projections
from sessionstream.core.supervisor import Supervisor
from sessionstream.eventstore.hub import _Listener
from sessionstream.eventstore.model import NewEvent, RecordedEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from tests.supervision.conftest import StoreFactory
from tests.supervision.helpers import (
    Always,
    Once,
    Subscriber,
    append_some,
    crash_logged,
    exactly_once,
    wait_for,
)


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
    pg_schema: str, make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionstream.server.keys import STORE
    from tests.conftest import Api
    from tests.pg import url_with_schema

    api: Api = await make_api(database_url=url_with_schema(pg_schema), task_restart_bound_s=0.5)
    client, store = api.client, api.app[STORE]
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


# checkpoints -----------------------------------------------------------------------------------
async def test_the_checkpoint_loop_restarts_and_records_again(
    sqlite_store: SQLiteEventStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sessionstream.eventstore.checkpoint import Signer
    from sessionstream.services import proofs

    store = sqlite_store
    sub = Subscriber(store, 0)
    record = Once(proofs.record_checkpoint)
    monkeypatch.setattr(proofs, "record_checkpoint", record)
    async with proofs.checkpoints(store, Signer.generate("test"), 0.05):
        appended = await append_some(store, 5)
        await wait_for(lambda: record.calls >= 3)
        kept = await store.tree.checkpoint()
        assert kept is not None
    assert store.supervisor.crashes["checkpoints"] == 1
    exactly_once(await sub.until(5), appended)
    await sub.stop()
    crash_logged(caplog, "checkpoints")


async def test_the_wal_checkpointer_restarts_with_a_fresh_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteEventStore(tmp_path / "log.db", projections.ALL, checkpoint_interval_s=0.02)
    store.supervisor.backoff_initial_s = 0.01
    await store.open()
    try:
        checkpointer = store.checkpointer
        monkeypatch.setattr(checkpointer, "checkpoint", Once(checkpointer.checkpoint))
        sub = Subscriber(store, 0)
        appended = await append_some(store, 5)
        await wait_for(lambda: checkpointer.runs >= 3)  # checkpointing goes on after the crash
        assert store.supervisor.crashes["wal-checkpoint"] == 1
        exactly_once(await sub.until(5), appended)
        await sub.stop()
    finally:
        await store.close()
    crash_logged(caplog, "wal-checkpoint")


async def test_the_tree_follows_the_log_between_two_checkpoints(
    sqlite_store: SQLiteEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint must not fold every append of its interval at once: between two, the
    loop integrates the tree every ``FOLLOW_S``, and signs nothing more."""
    from sessionstream.eventstore.checkpoint import Signer
    from sessionstream.services import proofs

    store = sqlite_store
    monkeypatch.setattr(proofs, "FOLLOW_S", 0.02)
    async with proofs.checkpoints(store, Signer.generate("test"), 3600):
        first = None
        for _ in range(200):
            first = await store.tree.checkpoint()
            if first is not None:
                break
            await asyncio.sleep(0.01)
        assert first is not None
        await append_some(store, 7)
        head = await store.head_position()
        for _ in range(300):
            if await store.tree._size() == head:
                break
            await asyncio.sleep(0.01)
        assert await store.tree._size() == head
        assert await store.tree.checkpoint() == first  # folded, not signed again
