"""Recovery on PostgreSQL writes one release per run, with the run's true outcome.

Two nodes share a database, each with its run manager and upkeep (lease
renewal and recovery) running on a short lease. In normal operation no run
is released twice; through a storage outage longer than the lease, the live
node keeps its run (nobody ends it as ``interrupted``, nobody logs that the
live node stopped renewing) and the run completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from sessionstream import projections
from sessionstream.core.errors import StorageUnavailable
from sessionstream.eventstore.model import AppendRequest, AppendResult
from sessionstream.services.accounts import RunTokens
from sessionstream.services.campaigns import Campaigns
from sessionstream.services.claims import claim_session
from sessionstream.services.runs import RunManager
from sessionstream.services.sessions import Sessions
from tests.pg import DSN, throwaway_schema
from tests.scripted_engine import ScriptedEngine
from tests.supervision.helpers import wait_for

asyncpg = pytest.importorskip("asyncpg")

from sessionstream.eventstore.postgres import PostgresEventStore  # noqa: E402
from sessionstream.eventstore.postgres.reader import PostgresReader  # noqa: E402

pytestmark = pytest.mark.postgres

TERMINAL = ("run.completed", "run.failed", "run.canceled")


@pytest.fixture
async def stores() -> AsyncIterator[tuple[PostgresEventStore, PostgresEventStore]]:
    async for schema in throwaway_schema("test_pgrec"):
        a = PostgresEventStore(DSN, projections.ALL, schema=schema, pool_size=3)
        b = PostgresEventStore(DSN, projections.ALL, schema=schema, pool_size=3)
        await a.open()
        await b.open()
        try:
            yield a, b
        finally:
            await a.close()
            await b.close()


async def start(runs: RunManager, store: PostgresEventStore, user: str) -> tuple[str, str]:
    """A session of a new campaign, and a turn started on it: (session id, run id)."""
    campaigns = Campaigns(store)
    campaign = await campaigns.create_campaign(user, "c")
    node = await campaigns.add_node(user, campaign.key, "n", None)
    sessions = Sessions(store, runs, RunTokens("test-secret-" * 4, 60))
    session = await sessions.create_session(user, campaign.key, node["id"])
    claim = await claim_session(store, user, session.key, kind="turn", run_input={"message": "hi"})
    runs.start(claim, {"message": "hi"})
    return session.key, claim.run_id


async def releases(store: PostgresEventStore, sid: str) -> list[tuple[str, str]]:
    events = await store.read_stream(f"session-{sid}")
    return [(e.data["run_id"], e.data["outcome"]) for e in events if e.type == "run.released"]


async def terminal(store: PostgresEventStore, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    events = await store.read_stream(f"run-{run_id}")
    return [(e.type, e.data) for e in events if e.type in TERMINAL]


@contextlib.asynccontextmanager
async def upkeep(*managers: RunManager) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(m.upkeep()) for m in managers]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for m in managers:
            await m.shutdown()


async def test_normal_operation_releases_each_run_once_with_its_outcome(
    stores: tuple[PostgresEventStore, PostgresEventStore],
) -> None:
    a, b = stores
    ttl = 0.6
    runs_a = RunManager(a, ScriptedEngine(words=12, pace_s=0.01), node_id="a", lease_ttl_s=ttl)
    runs_b = RunManager(b, ScriptedEngine(words=12, fail_with="no"), node_id="b", lease_ttl_s=ttl)
    started: list[tuple[RunManager, PostgresEventStore, str, str]] = []
    async with upkeep(runs_a, runs_b):
        for n in range(6):  # completed on node A, failed on node B, while both recover
            for runs, store in ((runs_a, a), (runs_b, b)):
                sid, run_id = await start(runs, store, f"u{n}")
                started.append((runs, store, sid, run_id))
            await asyncio.sleep(ttl / 3)
        await wait_for(lambda: runs_a.active == 0 and runs_b.active == 0, within=30)
        await asyncio.sleep(3 * ttl)  # several recovery rounds on both nodes after the ends
    for runs, _store, sid, run_id in started:
        outcome = "run.completed" if runs is runs_a else "run.failed"
        assert [t for t, _ in await terminal(a, run_id)] == [outcome]
        assert await releases(a, sid) == [(run_id, outcome)]


def storage_down(
    monkeypatch: pytest.MonkeyPatch, *stores: PostgresEventStore
) -> Callable[[bool], None]:
    """A switch that makes every read and write of these stores refuse, as a database
    failing over does for every node at once."""
    down = False
    real_connection = PostgresReader.connection

    @contextlib.asynccontextmanager
    async def connection(self: PostgresReader) -> AsyncIterator[Any]:
        if down:
            raise StorageUnavailable("no PostgreSQL host answered (injected); retry")
        async with real_connection(self) as conn:
            yield conn

    monkeypatch.setattr(PostgresReader, "connection", connection)
    for store in stores:
        real = store.transact

        def refusing(
            real: Callable[[Sequence[AppendRequest]], Awaitable[list[AppendResult]]],
        ) -> Callable[[Sequence[AppendRequest]], Awaitable[list[AppendResult]]]:
            async def transact(requests: Sequence[AppendRequest]) -> list[AppendResult]:
                if down:
                    raise StorageUnavailable("no PostgreSQL host answered (injected); retry")
                return await real(requests)

            return transact

        monkeypatch.setattr(store, "transact", refusing(real))

    def switch(value: bool) -> None:
        nonlocal down
        down = value

    return switch


async def test_an_outage_longer_than_the_lease_leaves_a_live_nodes_run_alone(
    stores: tuple[PostgresEventStore, PostgresEventStore],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = stores
    ttl = 1.2
    gate = asyncio.Event()
    runs_a = RunManager(a, ScriptedEngine(words=20, gate=gate), node_id="a", lease_ttl_s=ttl)
    runs_b = RunManager(b, ScriptedEngine(), node_id="b", lease_ttl_s=ttl)
    sid, run_id = await start(runs_a, a, "u1")
    switch = storage_down(monkeypatch, a, b)
    caplog.set_level(logging.INFO, logger="sessionstream.runs")
    async with upkeep(runs_a, runs_b):
        await wait_for(lambda: run_id in runs_a._epochs)  # running, its lease taken
        await asyncio.sleep(ttl / 2)
        switch(True)
        await asyncio.sleep(3 * ttl)  # every lease has expired: nobody could renew
        switch(False)
        await asyncio.sleep(2 * ttl)  # both nodes' recovery rounds run on working storage
        gate.set()
        await wait_for(lambda: runs_a.active == 0, within=30)
    assert [t for t, _ in await terminal(a, run_id)] == ["run.completed"]
    assert await releases(a, sid) == [(run_id, "run.completed")]
    assert "stopped renewing" not in caplog.text
    assert runs_b.recovered == 0


async def test_a_node_that_saw_storage_fail_waits_a_lease_before_judging_leases(
    stores: tuple[PostgresEventStore, PostgresEventStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node A really died during the outage: node B ends its run, but only after storage
    has answered B for a whole lease, and as the system."""
    a, b = stores
    ttl = 0.8
    gate = asyncio.Event()
    runs_a = RunManager(a, ScriptedEngine(gate=gate), node_id="a", lease_ttl_s=ttl)
    runs_b = RunManager(b, ScriptedEngine(), node_id="b", lease_ttl_s=ttl)
    sid, run_id = await start(runs_a, a, "u1")
    await wait_for(lambda: run_id in runs_a._epochs)

    async def dead(*_args: Any) -> None:  # a dead node writes nothing, drops nothing
        return None

    monkeypatch.setattr(runs_a, "_end_quietly", dead)
    monkeypatch.setattr(runs_a, "_drop", dead)
    runs_a._tasks.pop(run_id).cancel()  # node A is gone: nobody renews its lease
    switch = storage_down(monkeypatch, b)
    loop = asyncio.get_running_loop()
    async with upkeep(runs_b):
        switch(True)
        await asyncio.sleep(2 * ttl)
        switch(False)
        back = loop.time()
        await wait_for(lambda: runs_b.recovered == 1, within=20)
        assert loop.time() - back >= ttl * 0.9, "B judged a lease that expired in the outage"
    ended = await terminal(b, run_id)
    assert ended == [("run.failed", {"error": "interrupted"})]
    events = await b.read_stream(f"run-{run_id}")
    assert events[-1].metadata["actor"] == {"type": "system", "id": "recovery"}
    assert await releases(b, sid) == [(run_id, "run.failed")]
