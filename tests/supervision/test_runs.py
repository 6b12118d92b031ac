"""Runs and their upkeep: lease renewal, run recovery, a run that raises."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.services.claims import Claim
from tests.supervision.conftest import StoreFactory
from tests.supervision.helpers import (
    Once,
    Subscriber,
    crash_logged,
    exactly_once,
    new_session,
    wait_for,
)

# run upkeep: lease renewal and run recovery -----------------------------------------------------


@pytest.mark.postgres
async def test_lease_renewal_restarts_and_the_run_keeps_its_lease_and_its_events(
    pg_nodes: StoreFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sessionstream.eventstore.postgres import PostgresEventStore
    from sessionstream.services.claims import claim_session
    from sessionstream.services.runs import RunManager
    from tests.scripted_engine import ScriptedEngine

    store = await pg_nodes()
    assert isinstance(store, PostgresEventStore)
    ttl = 0.6
    gate = asyncio.Event()  # the run streams half its words, then waits for the test
    runs = RunManager(
        store, ScriptedEngine(gate=gate), node_id="node-a", lease_ttl_s=ttl, coalesce_ms=0
    )
    session_id = await new_session(store)
    claim = await claim_session(store, "u1", session_id, kind="turn", run_input={"message": "hi"})
    sub = Subscriber(store, 0, frozenset({f"run-{claim.run_id}"}))
    runs.start(claim, {"message": "hi"})
    deadline = time.monotonic() + 10
    while await store.lease_holders() != {claim.run_id: "node-a"}:  # taken by the run
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    renew = Once(store.renew_leases)
    monkeypatch.setattr(store, "renew_leases", renew)
    upkeep = asyncio.create_task(runs.upkeep())
    try:
        await asyncio.sleep(4 * ttl)  # renewal crashed once: the lease would have expired
        assert renew.calls >= 3
        assert store.supervisor.crashes["lease-renewal"] == 1
        assert await store.lease_holders() == {claim.run_id: "node-a"}
        run = await store.get_doc("run", claim.run_id)
        assert run is not None and run.body["status"] == "running"
        gate.set()
        await wait_for(lambda: not runs.is_local(claim.run_id))
    finally:
        upkeep.cancel()
        await asyncio.gather(upkeep, return_exceptions=True)
        await runs.shutdown()
    stream = await store.read_stream(f"run-{claim.run_id}")
    assert stream[-1].type == "run.completed"
    exactly_once(await sub.until(len(stream)), stream)
    await sub.stop()
    crash_logged(caplog, "lease-renewal")


async def test_run_recovery_restarts_and_ends_a_run_whose_end_was_not_written(
    sqlite_store: SQLiteEventStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sessionstream.core.vocabulary import EventType
    from sessionstream.services.claims import claim_session
    from sessionstream.services.runs import RunManager
    from tests.scripted_engine import ScriptedEngine

    store = sqlite_store
    runs = RunManager(store, ScriptedEngine())
    session_id, head, sub = await watched_session(store)
    claim = await claim_session(store, "u1", session_id, kind="turn", run_input={"message": "hi"})
    # the run's own end could not be written: upkeep must write it
    runs._unended[claim.run_id] = (EventType.RUN_FAILED, {"error": "storage was down"})
    monkeypatch.setattr(runs, "retry_unended", Once(runs.retry_unended))
    upkeep = asyncio.create_task(runs.upkeep())
    try:
        await wait_for(lambda: not runs._unended, within=15)
    finally:
        upkeep.cancel()
        await asyncio.gather(upkeep, return_exceptions=True)
    assert store.supervisor.crashes["run-recovery"] == 1
    await ended_failed_and_delivered(store, claim, head, sub)
    crash_logged(caplog, "run-recovery")


async def test_a_run_that_raises_is_counted_ends_failed_and_its_subscribers_see_the_end(
    sqlite_store: SQLiteEventStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sessionstream.services import runs as runs_module
    from sessionstream.services.claims import claim_session
    from sessionstream.services.runs import RunManager
    from tests.scripted_engine import ScriptedEngine

    store = sqlite_store
    manager = RunManager(store, ScriptedEngine())
    session_id, head, sub = await watched_session(store)

    async def broken_turn(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("injected: a bug in the turn")

    monkeypatch.setattr(runs_module, "run_turn", broken_turn)
    claim = await claim_session(store, "u1", session_id, kind="turn", run_input={"message": "hi"})
    manager.start(claim, {"message": "hi"})
    await wait_for(lambda: not manager.is_local(claim.run_id))
    assert store.supervisor.crashes["run"] == 1
    await ended_failed_and_delivered(store, claim, head, sub)
    crash_logged(caplog, "run")


async def watched_session(store: EventStore) -> tuple[str, int, Subscriber]:
    """A fresh session of u1's, the head before anything happens to it, and a subscriber
    to the session's events from there."""
    session_id = await new_session(store)
    head = await store.head_position()
    return session_id, head, Subscriber(store, head, frozenset({f"session-{session_id}"}))


async def ended_failed_and_delivered(
    store: EventStore, claim: Claim, head: int, sub: Subscriber
) -> None:
    """The run ended failed and freed its session, and the subscriber got every event of the
    session since ``head`` exactly once."""
    run = await store.get_doc("run", claim.run_id)
    assert run is not None and run.body["status"] == "failed"
    expected = await store.read_all(head, keys=frozenset({f"session-{claim.session_id}"}))
    assert [e.type for e in expected][-2:] == ["run.failed", "run.released"]
    exactly_once(await sub.until(len(expected)), expected)
    await sub.stop()
