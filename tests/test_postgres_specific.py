"""What only the PostgreSQL backend has: migrations, many nodes, NOTIFY, leases.

The shared store contract runs in ``tests/contract/``; these tests cover what
SQLite cannot have: several store instances (= nodes) on one database, their
ordering and wake-ups, schema migrations racing at start-up, run leases.
Each test uses a throwaway schema that is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from sessionstream import projections
from sessionstream.core.errors import ConcurrencyConflict, StorageUnavailable, ValidationFailed
from sessionstream.eventstore.hub import Hub
from sessionstream.eventstore.model import (
    GENESIS_HASH,
    NewEvent,
    RecordedEvent,
    recompute_hash,
    utc_now,
)
from tests.pg import DSN, StoreFactory, node_opener, throwaway_schema

asyncpg = pytest.importorskip("asyncpg")

from sessionstream.eventstore.postgres import PostgresEventStore, translate_pg_error  # noqa: E402
from sessionstream.eventstore.postgres import schema as pg_schema  # noqa: E402
from sessionstream.eventstore.postgres.pump import LogPump  # noqa: E402

pytestmark = pytest.mark.postgres


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_pg"):
        yield name


@pytest.fixture
async def nodes(schema: str) -> AsyncIterator[StoreFactory]:
    """Opens store instances on the test schema, each standing in for one node."""
    async for open_node in node_opener(schema, pool_size=3):
        yield open_node


async def collect(store: PostgresEventStore, count: int, within: float = 20) -> list[RecordedEvent]:
    got: list[RecordedEvent] = []

    async def run() -> None:
        async for event in store.subscribe(0):
            got.append(event)
            if len(got) >= count:
                return

    await asyncio.wait_for(run(), within)
    return got


def check_chains(events: list[RecordedEvent]) -> None:
    heads: dict[str, tuple[int, str]] = {}
    for event in events:
        version, prev = heads.get(event.stream_id, (0, GENESIS_HASH))
        assert event.version == version + 1, event
        assert recompute_hash(prev, event) == event.hash, event
        heads[event.stream_id] = (event.version, event.hash)


# the ordered pump (no database) ---------------------------------------------------------
def fake_event(position: int) -> RecordedEvent:
    return RecordedEvent(position, "s", position, f"e{position}", "x", {}, {}, None, "t", "h")


async def test_the_pump_publishes_in_position_order_whoever_committed() -> None:
    log = [fake_event(p) for p in range(1, 11)]
    reads: list[int] = []

    async def read_after(position: int) -> list[RecordedEvent]:
        reads.append(position)
        return [e for e in log if e.position > position][:3]

    async def poll() -> int:
        return 0

    hub = Hub()
    listener = hub.register(None)
    pump = LogPump(hub, read_after, poll)
    pump.head_moved(2)  # another node's NOTIFY
    # this node committed 7-8 before the pump got round to 1-6 (commits by others)
    pump.committed(log[6:8])
    await pump.drain()
    assert [e.position for e in listener.buffer] == list(range(1, 9))
    pump.committed(log[8:10])
    await pump.drain()
    assert [e.position for e in listener.buffer] == list(range(1, 11))
    assert hub.published_position == 10
    assert reads == [0, 3]  # 1-6 read in pages of three; 7-10 handed over, never read
    pump.head_moved(12)  # a notification ahead of what is visible: wait, publish nothing
    await pump.drain()
    assert hub.published_position == 10


# migrations -----------------------------------------------------------------------------
async def test_migrations_are_idempotent(schema: str, nodes: StoreFactory) -> None:
    first = await nodes()
    await first.append("s-1", [NewEvent("x", {})])
    await first.close()
    again = await nodes()  # reopening finds everything applied and keeps the data
    assert await again.head_position() == 1
    conn = await asyncpg.connect(DSN)
    try:
        assert await pg_schema.migrate(conn, schema) == 0
        rows = await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations ORDER BY 1')
    finally:
        await conn.close()
    assert [r[0] for r in rows] == list(range(1, pg_schema.LATEST + 1))


async def test_nodes_starting_at_once_migrate_once(schema: str, nodes: StoreFactory) -> None:
    stores = await asyncio.gather(*(nodes() for _ in range(6)))
    results = await asyncio.gather(
        *(s.append(f"s-{i}", [NewEvent("x", {"i": i})]) for i, s in enumerate(stores))
    )
    assert sorted(r.events[0].position for r in results) == list(range(1, 7))
    conn = await asyncpg.connect(DSN)
    try:
        count = await conn.fetchval(f'SELECT count(*) FROM "{schema}".schema_migrations')
    finally:
        await conn.close()
    assert count == pg_schema.LATEST


async def test_a_newer_schema_is_refused(schema: str, nodes: StoreFactory) -> None:
    store = await nodes()
    await store.close()
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(
            f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)',
            pg_schema.LATEST + 1,
        )
    finally:
        await conn.close()
    with pytest.raises(StorageUnavailable, match="newer than this build"):
        await nodes()


async def test_schema_from_the_url_search_path(schema: str) -> None:
    store = PostgresEventStore(f"{DSN}?search_path={schema}", projections.ALL, pool_size=2)
    await store.open()
    try:
        assert store.schema == schema
        await store.append("s-1", [NewEvent("x", {})])
    finally:
        await store.close()
    conn = await asyncpg.connect(DSN)
    try:
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".events') == 1
    finally:
        await conn.close()


async def test_changed_projections_are_rebuilt_when_nodes_start_together(
    schema: str, nodes: StoreFactory
) -> None:
    first = await nodes(snapshot_every=2)
    user = str(uuid.uuid4())
    await first.append(
        f"user-{user}",
        [NewEvent("user.created", {"id": user, "name": "ann"}), NewEvent("x", {})],
        expected_version=0,
    )
    before = await first.get_doc("user", user)
    await first.close()
    conn = await asyncpg.connect(DSN)
    try:  # as if this build's user projection were newer than the stored one
        await conn.execute(
            f"UPDATE \"{schema}\".meta SET value = '0' WHERE key = 'projection:user'"
        )
        await conn.execute(f'DELETE FROM "{schema}".docs')
    finally:
        await conn.close()
    a, b = await asyncio.gather(nodes(), nodes())
    assert await a.get_doc("user", user) == before
    assert await b._stale_projections() == []


# many nodes, one order ---------------------------------------------------------------------
async def test_eight_nodes_appending_reach_a_tail_gapless_and_in_order(nodes: StoreFactory) -> None:
    writers = await asyncio.gather(*(nodes() for _ in range(8)))
    reader = await nodes()
    per_writer, streams = 120, 5
    total = len(writers) * per_writer
    tail = asyncio.create_task(collect(reader, total))

    async def write(n: int, store: PostgresEventStore) -> None:
        async def one(i: int) -> None:
            # several writers share streams, so some appends race on a stream
            await store.append(f"s-{i % streams}", [NewEvent("x", {"w": n, "i": i})])

        await asyncio.gather(*(one(i) for i in range(per_writer)))

    await asyncio.gather(*(write(n, s) for n, s in enumerate(writers)))
    got = await tail
    assert [e.position for e in got] == list(range(1, total + 1))
    check_chains(got)
    assert await reader.read_all(0, limit=total + 10) == got
    assert reader.hub.published_position == total


async def test_notify_wakes_another_node_without_polling(nodes: StoreFactory) -> None:
    writer = await nodes()
    reader = await nodes(poll_interval_s=60.0)  # only NOTIFY can wake it in time
    await writer.append("s-0", [NewEvent("x", {})])
    await collect(reader, 1)
    latencies = []
    for i in range(5):
        tail = asyncio.create_task(collect(reader, 2 + i))
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        await writer.append("s-1", [NewEvent("x", {"i": i})])
        await tail
        latencies.append(time.perf_counter() - started)
    assert max(latencies) < 1.0, latencies


async def test_the_poll_catches_up_when_the_listener_dies(nodes: StoreFactory) -> None:
    writer = await nodes()
    reader = await nodes(poll_interval_s=0.2)
    assert reader._lconn is not None
    reader._lconn.terminate()  # as if the connection dropped
    await writer.append("s-1", [NewEvent("x", {})])
    got = await collect(reader, 1, within=5)
    assert got[0].stream_id == "s-1"
    await asyncio.sleep(0.5)
    assert reader._lconn is not None and not reader._lconn.is_closed()  # listening again


async def test_a_write_on_one_node_is_read_on_another(nodes: StoreFactory) -> None:
    a, b = await nodes(), await nodes()
    user = str(uuid.uuid4())
    await a.append(
        f"user-{user}",
        [NewEvent("user.created", {"id": user, "name": "ann"})],
        expected_version=0,
    )
    doc = await b.get_doc("user", user)
    assert doc is not None and doc.body["name"] == "ann"


async def test_expected_versions_hold_across_nodes(nodes: StoreFactory) -> None:
    a, b = await nodes(), await nodes()
    await a.append("s-1", [NewEvent("x", {})])
    outcomes = await asyncio.gather(
        a.append("s-1", [NewEvent("x", {"by": "a"})], expected_version=1),
        b.append("s-1", [NewEvent("x", {"by": "b"})], expected_version=1),
        return_exceptions=True,
    )
    assert sum(isinstance(o, ConcurrencyConflict) for o in outcomes) == 1
    assert await b.stream_version("s-1") == 2


async def test_an_idempotent_retry_on_another_node_is_a_no_op(nodes: StoreFactory) -> None:
    a, b = await nodes(), await nodes()
    event = NewEvent("x", {"n": 1})
    first = await a.append("s-1", [event])
    again = await b.append("s-1", [event])
    assert again.duplicate and again.events == first.events
    assert await b.head_position() == 1


async def test_a_request_the_database_refuses_fails_alone(schema: str, nodes: StoreFactory) -> None:
    store = await nodes()
    await store.append("s-0", [NewEvent("x", {})])
    conn = await asyncpg.connect(DSN)
    try:  # a row the writer cannot foresee: the stream head does not know it
        await conn.execute(
            f'INSERT INTO "{schema}".events VALUES '
            "(1000, 'rogue', 1, 'rogue-1', 'x', '{}', '{}', NULL, '2020-01-01T00:00:00.000Z', '')"
        )
    finally:
        await conn.close()
    outcomes = await asyncio.gather(
        store.append("s-1", [NewEvent("x", {})]),
        store.append("rogue", [NewEvent("x", {})]),
        store.append("s-2", [NewEvent("x", {})]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], ValidationFailed)
    ok = [o for o in outcomes if not isinstance(o, BaseException)]
    assert sorted(o.events[0].position for o in ok) == [2, 3]


async def test_an_exported_log_imports_verbatim_into_another_database(
    nodes: StoreFactory,
) -> None:
    source = await nodes(snapshot_every=2)
    user = str(uuid.uuid4())
    await source.append(
        f"user-{user}",
        [NewEvent("user.created", {"id": user, "name": "ann"}), NewEvent("x", {})],
        expected_version=0,
    )
    await source.append(f"user-{user}", [NewEvent("token.issued", {"token_hash": "h"})])
    await source.append("s-1", [NewEvent("x", {"n": 1})])
    sid = str(uuid.uuid4())
    created = {"id": sid, "user_id": user, "campaign_id": "c", "node_id": "n"}
    await source.append(
        f"session-{sid}",
        [
            NewEvent("session.created", created),
            NewEvent("session.patched", {"fields": {"task_status": None}}),
            NewEvent("session.patched", {"fields": {"task_status": None}}),
        ],
    )
    exported = await source.read_all(0)
    other_schema = f"test_pg_{uuid.uuid4().hex[:12]}"
    target = PostgresEventStore(DSN, projections.ALL, schema=other_schema, snapshot_every=2)
    await target.open()
    try:
        tail = asyncio.create_task(collect(target, len(exported)))
        await asyncio.sleep(0.05)
        await target.import_events(exported[:2])  # in chunks, in order
        await target.import_events(exported[2:])
        assert await tail == exported
        assert await target.read_all(0) == exported
        assert await target.get_doc("user", user) == await source.get_doc("user", user)
        assert await target.get_doc("session", sid) == await source.get_doc("session", sid)
        await source.rebuild()  # import folds like a rebuild (snapshots are only a cache)
        snapshot = await source.latest_snapshot(f"session-{sid}", "session")
        assert snapshot is not None
        assert await target.latest_snapshot(f"session-{sid}", "session") == snapshot
        appended = await target.append("s-1", [NewEvent("x", {})], expected_version=1)
        assert appended.events[0].position == len(exported) + 1
        check_chains(await target.read_all(0))
        with pytest.raises(ValidationFailed, match="not above"):
            await target.import_events(exported[-1:])
        head = await target.head_position()
        late = RecordedEvent(head + 1, "s-2", 3, "e-late", "x", {}, {}, None, "t", "h")
        with pytest.raises(ValidationFailed, match="does not follow"):
            await target.import_events([late])
        assert await target.head_position() == head
    finally:
        await target.close()
        conn = await asyncpg.connect(DSN)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{other_schema}" CASCADE')
        await conn.close()


async def test_a_rebuild_folds_what_spans_streams_in_log_order_holding_no_events(
    nodes: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usage projection keys every event its user appended: a rebuild that held
    those events for the end held most of the log (above 150 MB at 10^6 events).
    They are folded in a second read in position order, to the documents appends made."""
    from sessionstream.eventstore import projector
    from sessionstream.eventstore.postgres import refold

    held: list[int] = []

    class Spy(projector.StreamFold):
        def feed(self, events: Any) -> Any:
            out = super().feed(events)
            held.append(len(self._held))
            return out

    store = await nodes(snapshot_every=2)
    users = [str(uuid.uuid4()) for _ in range(2)]
    for n, user in enumerate(users):
        actor = {"actor": {"type": "user", "id": user}}
        await store.append(
            f"user-{user}", [NewEvent("user.created", {"id": user, "name": f"u{n}"}, actor)]
        )
        await store.append(f"user-{user}", [NewEvent("token.issued", {"token_hash": f"h{n}"})])
        for k in range(3):  # streams in between, so log order differs from stream order
            for other in users:
                await store.append(
                    f"s-{other}-{k}", [NewEvent("x", {"n": n, "pad": "y" * (k + 1)}, actor)]
                )
    before = {kind: await store.scan_docs(kind, limit=100) for kind in ("usage", "token")}
    assert len(before["usage"]) == 2 and before["token"]
    monkeypatch.setattr(refold, "StreamFold", Spy)
    assert await store.rebuild() == await store.head_position()
    assert held and max(held) == 0
    for kind, docs in before.items():
        assert await store.scan_docs(kind, limit=100) == docs


def queries_sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Every query the PostgreSQL reader fetches from now on, with its arguments, so a
    test can ask the planner how it ran each one."""
    from sessionstream.eventstore.postgres import reader

    sent: list[tuple[str, tuple[Any, ...]]] = []
    fetch = reader.PostgresReader.fetch

    async def spy(self: Any, query: str, *args: Any) -> list[Any]:
        sent.append((query, args))
        return await fetch(self, query, *args)

    monkeypatch.setattr(reader.PostgresReader, "fetch", spy)
    return sent


async def test_a_page_of_a_long_list_reads_its_page_not_the_list(
    nodes: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing index is in the order a list is read, so a page's plan stops after
    the page: no sort of every document of the campaign under its limit (what the
    default NULLS LAST order made of ``ORDER BY created_at NULLS FIRST``)."""
    store = await nodes()
    async with store._reader.connection() as conn:
        await conn.execute(
            "INSERT INTO docs (kind, key, owner, parent, created_at, version, position, body) "
            "SELECT 'session', 'k' || lpad(n::text, 5, '0'), 'u', 'c', "
            "CASE WHEN n % 100 = 0 THEN NULL ELSE 't' || lpad(n::text, 5, '0') END, "
            "1, n, '{}' FROM generate_series(1, 3000) AS n"
        )
        await conn.execute("ANALYZE docs")
    sent = queries_sent(monkeypatch)
    first = await store.list_docs("session", owner="u", parent="c", limit=51, max_bytes=1 << 20)
    assert [d.key for d in first[:3]] == ["k00100", "k00200", "k00300"]  # NULLs first
    mark = (first[-1].index.created_at or "", first[-1].key)
    await store.list_docs("session", owner="u", parent="c", after=mark, limit=51)
    for query, args in sent:
        async with store._reader.connection() as conn:
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}", *args)
        limits = list(nodes_of(json.loads(plan)[0]["Plan"], "Limit"))
        assert limits, plan
        for limit in limits:  # straight onto the index, in its order
            (below,) = limit["Plans"]
            assert below["Node Type"] == "Index Scan", plan
            assert below["Index Name"] == "docs_listing", plan


async def test_a_read_by_keys_finds_its_rows_by_the_keys_even_with_a_generic_plan(
    nodes: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session's events (catch-up, the audit endpoint) are found through the stream and
    correlation indexes. asyncpg keeps statements prepared, and from a statement's sixth
    run PostgreSQL may plan it once for any parameters: it guessed a sliver of the log
    between ``after`` and the bound and walked the primary key from ``after``, filtering
    every later event, which grows with the log (61 ms at 10^6 events)."""
    store = await nodes()
    async with store._reader.connection() as conn:
        await conn.execute(
            "INSERT INTO events (position, stream_id, version, event_id, type, data, metadata, "
            "correlation_id, recorded_at, hash) SELECT n, 's-' || (n % 2000), n / 2000 + 1, "
            "'e' || n, 'x', '{}', '{}', 'c-' || (n % 500), 't', 'h' "
            "FROM generate_series(1, 40000) AS n"
        )
        await conn.execute("ANALYZE events")
    sent = queries_sent(monkeypatch)
    keys = frozenset({"s-7", "c-7"})
    page = await store._reader.read_page(
        100, max_rows=500, max_bytes=1 << 20, keys=keys, to_position=40000
    )
    assert page and all(e.position > 100 for e in page)
    await store._reader.read_all(100, keys=keys, to_position=40000)
    assert len(sent) == 2
    async with store._reader.connection() as conn:
        for n, (query, args) in enumerate(sent):
            await conn.execute(f"PREPARE keyed{n} AS {query}")
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            try:
                params = ", ".join(literal(a) for a in args)  # EXECUTE takes no $n
                plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE keyed{n}({params})")
            finally:
                await conn.execute("RESET plan_cache_mode")
                await conn.execute(f"DEALLOCATE keyed{n}")
            for node in nodes_of(json.loads(plan)[0]["Plan"], "Index Scan"):
                # the primary key may look up listed positions, never walk a range
                assert not (
                    node["Index Name"] == "events_pkey" and ">" in node.get("Index Cond", "")
                ), plan


def literal(value: Any) -> str:
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(literal(v) for v in value) + "]::text[]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


def nodes_of(plan: dict[str, Any], kind: str) -> Iterator[dict[str, Any]]:
    if plan["Node Type"] == kind:
        yield plan
    for child in plan.get("Plans", ()):
        yield from nodes_of(child, kind)


# storage failures ----------------------------------------------------------------------------
async def test_a_read_only_database_is_storage_unavailable(nodes: StoreFactory) -> None:
    store = await nodes()
    assert store._writer.conn is not None
    await store._writer.conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    with pytest.raises(StorageUnavailable, match="read-only"):
        await store.append("s-1", [NewEvent("x", {})])
    assert await store.head_position() == 0


async def test_the_writer_reconnects_after_losing_its_connection(nodes: StoreFactory) -> None:
    store = await nodes()
    await store.append("s-1", [NewEvent("x", {})])
    assert store._writer.conn is not None
    store._writer.conn.terminate()
    result = await store.append("s-1", [NewEvent("x", {})])
    assert result.version == 2


async def test_an_unreachable_database_is_storage_unavailable() -> None:
    store = PostgresEventStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout_s=3)
    with pytest.raises(StorageUnavailable):
        await store.open()


def test_driver_errors_map_to_storage_unavailable() -> None:
    disk = translate_pg_error(asyncpg.exceptions.DiskFullError("no space"))
    assert isinstance(disk, StorageUnavailable) and "disk is full" in disk.message
    lost = translate_pg_error(asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
    assert isinstance(lost, StorageUnavailable) and "connection" in lost.message
    assert isinstance(translate_pg_error(ConnectionResetError()), StorageUnavailable)


# leases --------------------------------------------------------------------------------------
async def test_leases_expire_unless_renewed(nodes: StoreFactory) -> None:
    a, b = await nodes(), await nodes()
    now = utc_now()
    first = await a.acquire_lease("run_1", "node-a", 0.5)
    await a.acquire_lease("run_2", "node-a", 0.5)
    runs = {"run_1": now, "run_2": now}
    assert await b.expired_leases(runs, 10) == set()
    assert await b.lease_holders() == {"run_1": "node-a", "run_2": "node-a"}
    await asyncio.sleep(0.3)
    await a.renew_leases({"run_1": first}, "node-a", 5)
    await asyncio.sleep(0.4)
    assert await b.expired_leases(runs, 10) == {"run_2"}
    await a.release_lease("run_1", first + 1000)  # another epoch's release: kept
    assert await b.expired_leases(runs, 10) == {"run_2"}
    await a.release_lease("run_1", first)
    # no lease at all: recent activity gets the grace period, old activity does not
    old = "2020-01-01T00:00:00.000Z"
    assert await b.expired_leases({"run_1": now, "run_3": old, "run_4": None}, 10) == {
        "run_3",
        "run_4",
    }


async def test_a_lease_can_be_taken_over(nodes: StoreFactory) -> None:
    a = await nodes()
    first = await a.acquire_lease("run_1", "node-a", 5)
    second = await a.acquire_lease("run_1", "node-b", 5)
    assert second > first  # a takeover moves the epoch
    assert await a.lease_holders() == {"run_1": "node-b"}
    await a.renew_leases({"run_1": first}, "node-a", 0.01)  # the old holder's renewal: no-op
    await asyncio.sleep(0.05)
    assert await a.lease_holders() == {"run_1": "node-b"}


async def test_a_dead_nodes_run_is_ended_by_another_node(nodes: StoreFactory) -> None:
    from sessionstream.services.accounts import RunTokens
    from sessionstream.services.campaigns import Campaigns
    from sessionstream.services.claims import claim_session
    from sessionstream.services.runs import RunManager
    from sessionstream.services.sessions import Sessions
    from tests.scripted_engine import ScriptedEngine

    store_a, store_b = await nodes(), await nodes()
    ttl = 0.6
    gate = asyncio.Event()  # never set: the run streams half its words, then hangs
    runs_a = RunManager(
        store_a, ScriptedEngine(gate=gate), node_id="node-a", lease_ttl_s=ttl, coalesce_ms=0
    )
    runs_b = RunManager(store_b, ScriptedEngine(), node_id="node-b", lease_ttl_s=ttl)
    campaigns = Campaigns(store_a)
    campaign = await campaigns.create_campaign("u1", "c")
    node = await campaigns.add_node("u1", campaign.key, "n", None)
    sessions = Sessions(store_a, runs_a, RunTokens("test-secret-" * 4, 60))
    session = await sessions.create_session("u1", campaign.key, node["id"])
    claim = await claim_session(
        store_a, "u1", session.key, kind="turn", run_input={"message": "hi"}
    )
    assert runs_a.leases is store_a
    runs_a.start(claim, {"message": "hi"})
    upkeep_a = asyncio.create_task(runs_a.upkeep())
    upkeep_b = asyncio.create_task(runs_b.upkeep())
    try:
        await asyncio.sleep(3 * ttl)  # node A renews: node B leaves its run alone
        run = await store_b.get_doc("run", claim.run_id)
        assert run is not None and run.body["status"] == "running"
        assert await store_b.lease_holders() == {claim.run_id: "node-a"}

        upkeep_a.cancel()  # node A stops renewing, as a dead node would
        stopped = time.monotonic()
        while time.monotonic() - stopped < 5 * ttl:
            run = await store_b.get_doc("run", claim.run_id)
            assert run is not None
            if run.body["status"] != "running":
                break
            await asyncio.sleep(0.05)
        freed_after = time.monotonic() - stopped
        assert run.body["status"] == "failed" and run.body["error"] == "interrupted"
        assert freed_after <= 2.5 * ttl, freed_after
        doc = await store_b.get_doc("session", session.key)
        assert doc is not None and doc.body["row"]["task_status"] is None
        # node B held the run's lease while it ended it (fencing A off), then dropped it
        for _ in range(100):
            if not await store_b.lease_holders():
                break
            await asyncio.sleep(0.05)
        assert await store_b.lease_holders() == {}
    finally:
        upkeep_a.cancel()
        upkeep_b.cancel()
        await asyncio.gather(upkeep_a, upkeep_b, return_exceptions=True)
        await runs_a.shutdown()  # the hung task finds the run already ended and stops
    events = await store_b.read_stream(f"run-{claim.run_id}")
    terminal = [e.type for e in events if e.type in ("run.completed", "run.failed", "run.canceled")]
    assert terminal == ["run.failed"]
