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
        if r.name == "sessionstream.supervisor"
        and r.getMessage().startswith(f"background task {task}")
        and "crashed" in r.getMessage()
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
    session_id = await _session(store)
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
    session_id = await _session(store)
    head = await store.head_position()
    sub = Subscriber(store, head, frozenset({f"session-{session_id}"}))
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
    run = await store.get_doc("run", claim.run_id)
    assert run is not None and run.body["status"] == "failed"
    expected = await store.read_all(head, keys=frozenset({f"session-{session_id}"}))
    assert [e.type for e in expected][-2:] == ["run.failed", "run.released"]
    exactly_once(await sub.until(len(expected)), expected)
    await sub.stop()
    crash_logged(caplog, "run-recovery")


async def _session(store: EventStore) -> str:
    from sessionstream.services.accounts import RunTokens
    from sessionstream.services.campaigns import Campaigns
    from sessionstream.services.runs import RunManager
    from sessionstream.services.sessions import Sessions
    from tests.scripted_engine import ScriptedEngine

    campaigns = Campaigns(store)
    campaign = await campaigns.create_campaign("u1", "c")
    node = await campaigns.add_node("u1", campaign.key, "n", None)
    runs = RunManager(store, ScriptedEngine())
    sessions = Sessions(store, runs, RunTokens("test-secret-" * 4, 60))
    session = await sessions.create_session("u1", campaign.key, node["id"])
    return session.key


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


# realtime: the fanout per run, the websocket sender, the revocation sweep -----------------------
def _realtime_helpers() -> Any:
    from tests import test_realtime

    return test_realtime


async def test_a_fanout_that_crashes_hands_its_subscribers_back_without_a_gap(
    make_api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sessionstream.server.fanout import Fanout
    from sessionstream.server.keys import STORE
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    api = await make_api(engine=ScriptedEngine(words=80, pace_s=0.004))
    once = Once(Fanout._deliver, nth=3)

    def deliver(fanout: Fanout, event: RecordedEvent, end: tuple[int, str] | None) -> None:
        once(fanout, event, end)

    monkeypatch.setattr(Fanout, "_deliver", deliver)
    turn = await rt.start_turn(api)
    path = f"/api/realtime/runs/{turn.run_id}"
    results = await asyncio.gather(
        *(rt.collect(api, path, protocols=rt.bearer(turn.token)) for _ in range(3))
    )
    stored = await api.app[STORE].read_stream(f"run-{turn.run_id}")
    assert api.app[STORE].supervisor.crashes["fanout"] == 1
    for frames, code, _reason in results:
        assert code == 1000
        assert [f["seq"] for f in frames] == [e.version for e in stored]
    crash_logged(caplog, "fanout")


async def test_a_websocket_sender_that_crashes_closes_1011_and_the_client_resumes(
    make_api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sessionstream.server import websocket
    from sessionstream.server.keys import STORE
    from sessionstream.server.tail import Connection
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    gate = asyncio.Event()
    api = await make_api(engine=ScriptedEngine(words=40, pace_s=0.002, gate=gate))
    real = websocket._send_own
    crashes = 0

    async def send_own(realtime: Any, conn: Connection, transport: asyncio.Transport) -> Any:
        nonlocal crashes
        end = await real(realtime, conn, transport)
        if crashes == 0:  # sent what it had, joined the fanout: then the sender dies
            crashes += 1
            raise RuntimeError("injected: the sender broke")
        return end

    monkeypatch.setattr(websocket, "_send_own", send_own)
    turn = await rt.start_turn(api)
    path = f"/api/realtime/runs/{turn.run_id}"
    first = asyncio.create_task(rt.collect(api, path, protocols=rt.bearer(turn.token)))
    await asyncio.sleep(0.3)
    gate.set()
    frames, code, _ = await first
    assert code == 1011 and crashes == 1
    after = frames[-1]["seq"] if frames else 0
    rest, code, _ = await rt.collect(api, f"{path}?after={after}", protocols=rt.bearer(turn.token))
    assert code == 1000
    stored = await api.app[STORE].read_stream(f"run-{turn.run_id}")
    assert [f["seq"] for f in frames + rest] == [e.version for e in stored]
    assert api.app[STORE].supervisor.crashes["ws-sender"] == 1
    crash_logged(caplog, "ws-sender")


async def test_the_revocation_sweep_restarts_and_still_closes_a_revoked_channel(
    make_api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    import aiohttp

    from sessionstream.server.keys import STORE
    from sessionstream.server.revocation import Revocations
    from sessionstream.services.accounts import revoke_token
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    api = await make_api(engine=ScriptedEngine(words=10), token_cache_s=1.0)
    store = api.app[STORE]
    once = Once(Revocations.sweep)

    async def sweep(revocations: Revocations) -> int:
        result: int = await once(revocations)
        return result

    monkeypatch.setattr(Revocations, "sweep", sweep)
    mine, theirs = await api.session(), await api.session(api.token_b)
    channel = "/api/realtime/sessions/{}"
    async with (
        api.client.ws_connect(channel.format(mine["id"]), headers=api.h()) as revoked,
        api.client.ws_connect(channel.format(theirs["id"]), headers=api.h(api.token_b)) as kept,
    ):
        await revoke_token(store, api.token_a)
        turn = await rt.start_turn(api, theirs["id"], api.token_b)
        got: list[dict[str, Any]] = []
        while not got or got[-1]["type"] != "run.released":
            message = await kept.receive(timeout=10)
            assert message.type == aiohttp.WSMsgType.TEXT
            got.append(json.loads(message.data))
        deadline = time.monotonic() + 10
        message = await revoked.receive(timeout=10)
        while message.type == aiohttp.WSMsgType.TEXT:  # its session's own frames first
            assert time.monotonic() < deadline
            message = await revoked.receive(timeout=10)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == 4401
    assert once.calls >= 2 and store.supervisor.crashes["revocation-sweep"] == 1
    stored = await store.read_all(0, keys=frozenset({f"session-{theirs['id']}"}))
    assert [f["position"] for f in got] == [e.position for e in stored]
    assert any(f["runId"] == turn.run_id for f in got)
    crash_logged(caplog, "revocation-sweep")


# heartbeats: a subscriber tells "no events" from "no delivery" ----------------------------------
async def _next_heartbeat(ws: Any, within: float = 10.0) -> dict[str, Any]:
    import json

    import aiohttp

    deadline = time.monotonic() + within
    while True:
        assert time.monotonic() < deadline, "no heartbeat came"
        message = await ws.receive(timeout=within)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        frame: dict[str, Any] = json.loads(message.data)
        if frame["type"] == "heartbeat":
            return frame


async def test_every_wire_carries_the_nodes_delivery_position_in_its_heartbeat(
    make_api: Any,
) -> None:
    from sessionstream.server.keys import STORE
    from sessionstream.server.realtime import REALTIME
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    api = await make_api(engine=ScriptedEngine(words=5), delivery_heartbeat_s=0.05, sse_ping_s=0.05)
    store = api.app[STORE]
    session = await api.session()
    async with api.client.ws_connect(
        f"/api/realtime/sessions/{session['id']}", headers=api.h()
    ) as ws:
        beat = await _next_heartbeat(ws)
        assert set(beat) == {"type", "delivered", "head", "stalled", "at"}  # no seq, position
        assert beat["delivered"] == beat["head"] == store.hub.published_position
        assert beat["stalled"] is False
        turn = await rt.start_turn(api, session["id"])
        await rt.wait_idle(api, session["id"])
        head = store.hub.published_position
        later = await _next_heartbeat(ws)
        while later["delivered"] < head:  # beats sent while the turn ran were still queued
            later = await _next_heartbeat(ws)
        assert later["delivered"] == later["head"] == head > beat["delivered"]
    assert api.app[REALTIME].heartbeats.sent >= 2

    # SSE: the keep-alive comment is followed by a heartbeat event without an id
    r = await api.client.get(
        f"/api/realtime/sessions/{session['id']}?after={store.hub.published_position}",
        headers={**rt.SSE, **api.h()},
    )
    block = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
    r.close()
    lines = block.decode().splitlines()
    assert lines[0] == ": ping" and lines[1] == "event: heartbeat"
    assert not any(line.startswith("id:") for line in lines)
    assert '"delivered":' in lines[2] and lines[2].startswith("data: {")

    # Trigger.dev: only inside the comment its SDK ignores
    r = await api.client.get(
        f"/realtime/v1/streams/{turn.run_id}/chat",
        headers={"Authorization": f"Bearer {turn.token}", "Last-Event-ID": "1"},
    )
    assert r.status == 200
    r.close()


@pytest.mark.postgres
async def test_a_heartbeat_says_stalled_when_the_pump_is_down_and_the_head_moved_on(
    pg_schema: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionstream.server.app import create_app
    from sessionstream.server.keys import STORE
    from sessionstream.services.accounts import create_user
    from tests.conftest import Api, test_settings
    from tests.pg import url_with_schema

    settings = test_settings(
        tmp_path, database_url=url_with_schema(pg_schema), delivery_heartbeat_s=0.05
    )
    app = create_app(settings)
    client = await aiohttp_client(app)
    store = app[STORE]
    user_a, token_a = await create_user(store, "alice")
    user_b, token_b = await create_user(store, "bob")
    api = Api(client, app, token_a, token_b, user_a, user_b)
    session = await api.session()
    async with client.ws_connect(f"/api/realtime/sessions/{session['id']}", headers=api.h()) as ws:
        beat = await _next_heartbeat(ws)
        assert beat["stalled"] is False and beat["delivered"] == beat["head"]
        monkeypatch.setattr(store.pump, "drain", Always())  # type: ignore[attr-defined]
        await store.append("s-4", [NewEvent("thing.happened", {})])
        beat = await _next_heartbeat(ws)
        while not beat["stalled"]:
            beat = await _next_heartbeat(ws)
        assert beat["head"] > beat["delivered"]
        monkeypatch.undo()  # the pump comes back: delivery catches up, the stall ends
        while beat["stalled"] or beat["delivered"] < beat["head"]:
            beat = await _next_heartbeat(ws)


async def test_the_heartbeat_task_restarts_and_beats_again(
    make_api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    from sessionstream.server.heartbeat import Heartbeats
    from sessionstream.server.keys import STORE
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    once = Once(Heartbeats.beat)

    def beat(heartbeats: Heartbeats) -> int:
        result: int = once(heartbeats)
        return result

    monkeypatch.setattr(Heartbeats, "beat", beat)
    api = await make_api(engine=ScriptedEngine(words=5), delivery_heartbeat_s=0.05)
    store = api.app[STORE]
    session = await api.session()
    after = store.hub.published_position
    events: list[dict[str, Any]] = []
    async with api.client.ws_connect(
        f"/api/realtime/sessions/{session['id']}?after={after}", headers=api.h()
    ) as ws:
        await rt.start_turn(api, session["id"])
        await rt.wait_idle(api, session["id"])
        head = store.hub.published_position
        while True:  # every event, then a heartbeat that has delivered them all
            message = await ws.receive(timeout=10)
            frame = json.loads(message.data)
            if frame["type"] != "heartbeat":
                events.append(frame)
            elif frame["delivered"] >= head:
                break
    assert once.calls >= 2 and store.supervisor.crashes["heartbeat"] == 1
    stored = await store.read_all(after, keys=frozenset({f"session-{session['id']}"}))
    assert [f["position"] for f in events] == [e.position for e in stored]
    crash_logged(caplog, "heartbeat")


async def test_a_token_expiry_timer_that_raises_is_retried_and_still_closes_4401(
    make_api: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sessionstream.server.keys import RUN_TOKENS, STORE
    from sessionstream.server.tail import Connection
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    gate = asyncio.Event()
    api = await make_api(engine=ScriptedEngine(words=10, gate=gate))
    real_stop = Connection.stop
    once = Once(real_stop)  # the expiry's stop raises once; every other stop is real

    def stop(conn: Connection, code: int, reason: str) -> None:
        (once if code == 4401 else real_stop)(conn, code, reason)

    monkeypatch.setattr(Connection, "stop", stop)
    turn = await rt.start_turn(api)
    short = api.app[RUN_TOKENS].mint(turn.run_id, api.user_a, token_ref=api.ref(), ttl_s=1)
    path = f"/api/realtime/runs/{turn.run_id}"
    owner = asyncio.create_task(rt.collect(api, path, headers=api.h()))
    frames, code, _ = await rt.collect(api, f"{path}?token={short}")
    assert code == 4401 and once.calls == 2
    assert api.app[STORE].supervisor.crashes["token-expiry"] == 1
    assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
    gate.set()
    everything, code, _ = await owner
    assert code == 1000
    stored = await api.app[STORE].read_stream(f"run-{turn.run_id}")
    assert [f["seq"] for f in everything] == [e.version for e in stored]
    crash_logged(caplog, "token-expiry")


# the browser module reconnects when the node stalls ---------------------------------------------
STALL_SCRIPT = """
const sockets = [];
class FakeSocket {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.closed = null;
    sockets.push(this);
    queueMicrotask(() => { this.readyState = 1; if (this.onopen) this.onopen(); });
  }
  close(code, reason) { this.closed = [code, reason]; this.readyState = 3; }
  frame(value) { this.onmessage({ data: JSON.stringify(value) }); }
}
globalThis.WebSocket = FakeSocket;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const m = await import(process.argv[1]);
const events = [], states = [], beats = [];
const sub = m.subscribeSession({
  baseUrl: 'http://node.test', sessionId: 's', apiToken: 't', stallMs: 60,
  backoff: { baseMs: 1, capMs: 2 },
  onEvent: (frame) => events.push(frame.position),
  onState: (state, detail) => states.push([state, detail ? detail.reason || null : null]),
  onHeartbeat: (frame) => beats.push(frame.delivered),
});
await sleep(5);
sockets[0].frame({ type: 'thing', position: 1 });
sockets[0].frame({ type: 'heartbeat', delivered: 1, head: 1, stalled: false, at: 'x' });
sockets[0].frame({ type: 'heartbeat', delivered: 1, head: 5, stalled: true, at: 'x' });
await sleep(20);
sockets[1].frame({ type: 'thing', position: 1 });
sockets[1].frame({ type: 'thing', position: 2 });
sockets[1].frame({ type: 'heartbeat', delivered: 2, head: 2, stalled: false, at: 'x' });
await sleep(200);
sub.close();
console.log(JSON.stringify({ events, states, beats,
  urls: sockets.map((s) => s.url), closes: sockets.map((s) => s.closed) }));
"""


@pytest.mark.node
def test_the_browser_module_leaves_a_stalled_node_and_resumes_exactly_once() -> None:
    import json
    import shutil
    import subprocess

    from tests.conftest import ON_CI

    node = shutil.which("node")
    if node is None:
        if ON_CI:
            pytest.fail("node is required on CI")
        pytest.skip("node is not installed")
    module = Path(__file__).parent.parent / "server" / "static" / "sessionstream.js"
    done = subprocess.run(
        [node, "--input-type=module", "-e", STALL_SCRIPT, module.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(done.stdout)
    assert out["events"] == [1, 2]  # the duplicate after the resume is dropped
    assert out["beats"] == [1, 1, 2]
    # a stalled heartbeat: left at once, resumed after the last position
    assert out["closes"][0] == [1000, "stalled"]
    assert "after=1" in out["urls"][1]
    # heartbeats then silence longer than stallMs: left again, resumed after 2
    assert out["closes"][1] == [1000, "stalled"]
    assert "after=2" in out["urls"][2]
    assert len(out["urls"]) == 3  # no heartbeat yet on the third: never judged by them
    reasons = [reason for state, reason in out["states"] if state == "reconnecting"]
    assert reasons[:2] == ["stalled", "stalled"]
    assert out["states"][-1] == ["closed", None]


async def test_a_commit_not_yet_published_is_not_a_stall_until_it_stays_unpublished(
    sqlite_store: SQLiteEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionstream.server.heartbeat import Heartbeats
    from sessionstream.server.realtime_stats import RealtimeStats
    from sessionstream.server.tail import Tails

    store = sqlite_store
    await append_some(store, 2)
    beats = Heartbeats(store, Tails(store, RealtimeStats()), interval_s=0.1)
    assert beats.state()["stalled"] is False
    published = store.hub.published_position
    monkeypatch.setattr(store, "known_head", lambda: published + 1)  # NOTIFY came first
    fresh = beats.state()
    assert fresh["head"] == published + 1 and fresh["stalled"] is False
    await asyncio.sleep(0.12)
    assert beats.state()["stalled"] is True  # still unpublished an interval later
    await append_some(store, 1)  # delivery moves: no longer a stall
    monkeypatch.setattr(store, "known_head", lambda: store.hub.published_position)
    assert beats.state()["stalled"] is False


async def test_the_python_client_leaves_a_stalled_node_and_resumes_exactly_once(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionstream.client import Backoff, stream_run
    from sessionstream.server.heartbeat import Heartbeats
    from sessionstream.server.keys import STORE
    from sessionstream.server.realtime import REALTIME_STATS
    from tests.scripted_engine import ScriptedEngine

    rt = _realtime_helpers()
    real = Heartbeats.state
    stalls = 0

    def state(heartbeats: Heartbeats) -> dict[str, Any]:
        nonlocal stalls
        out = real(heartbeats)
        if stalls == 0 and out["delivered"] > 0:  # one beat says the node is stalled
            stalls += 1
            out["stalled"] = True
        return out

    monkeypatch.setattr(Heartbeats, "state", state)
    api = await make_api(engine=ScriptedEngine(words=60, pace_s=0.01), delivery_heartbeat_s=0.05)
    turn = await rt.start_turn(api)
    base = str(api.client.make_url("")).rstrip("/")
    frames = [
        frame
        async for frame in stream_run(
            base, turn.run_id, turn.token, backoff=Backoff(base_s=0.01, cap_s=0.02)
        )
    ]
    stored = await api.app[STORE].read_stream(f"run-{turn.run_id}")
    assert [f["seq"] for f in frames] == [e.version for e in stored]
    assert stalls == 1
    assert sum(api.app[REALTIME_STATS].opened.values()) == 2  # it left and came back


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
    session_id = await _session(store)
    head = await store.head_position()
    sub = Subscriber(store, head, frozenset({f"session-{session_id}"}))

    async def broken_turn(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("injected: a bug in the turn")

    monkeypatch.setattr(runs_module, "run_turn", broken_turn)
    claim = await claim_session(store, "u1", session_id, kind="turn", run_input={"message": "hi"})
    manager.start(claim, {"message": "hi"})
    await wait_for(lambda: not manager.is_local(claim.run_id))
    assert store.supervisor.crashes["run"] == 1
    run = await store.get_doc("run", claim.run_id)
    assert run is not None and run.body["status"] == "failed"
    expected = await store.read_all(head, keys=frozenset({f"session-{session_id}"}))
    assert [e.type for e in expected][-2:] == ["run.failed", "run.released"]
    exactly_once(await sub.until(len(expected)), expected)
    await sub.stop()
    crash_logged(caplog, "run")


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
