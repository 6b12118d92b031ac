"""The head lock is held for one statement, and run writes are fenced by lease epochs.

Issue 19: a node paused inside an append held the cluster-wide ``log_head``
lock, stalling every node; and a node that lost its run's lease was stopped
only because its expected version happened to be stale. These tests show,
against a real PostgreSQL, that appends from several stores at once all land
gapless with no lock held across round trips, that a writer which keeps
losing the race reserves the head and gets through, that a transaction left
holding the lock is ended within the lease-derived bound, and that a write
under a lease epoch that moved is refused even with the right expected
version -- alone, whatever else is in its batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sessionstream.core.errors import LeaseLost
from sessionstream.eventstore.model import AppendRequest, Fence, NewEvent
from tests.pg import DSN, StoreFactory, node_opener, throwaway_schema
from tests.test_pg_known import assert_chained_and_gapless, whole_log

asyncpg = pytest.importorskip("asyncpg")

from sessionstream.eventstore.postgres import PostgresEventStore  # noqa: E402
from sessionstream.eventstore.postgres import schema as sql  # noqa: E402

pytestmark = pytest.mark.postgres


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_pgfence"):
        yield name


@pytest.fixture
async def nodes(schema: str) -> AsyncIterator[StoreFactory]:
    async for open_node in node_opener(schema, pool_size=2):
        yield open_node


def run_write(stream: str, version: int, fence: Fence, text: str) -> list[AppendRequest]:
    return [AppendRequest(stream, (NewEvent("x", {"t": text}),), version, fence)]


async def test_a_write_under_a_moved_epoch_is_refused_whatever_its_version(
    nodes: StoreFactory,
) -> None:
    a, b = await nodes(), await nodes()
    first = Fence("run_1", await a.acquire_lease("run_1", "node-a", 30))
    await a.transact(run_write("run:1", 0, first, "a1"))
    await a.transact(run_write("run:1", 1, first, "a2"))  # planned on what A knows
    taken = Fence("run_1", await b.acquire_lease("run_1", "node-b", 30))
    assert taken.epoch != first.epoch
    head = await a.head_position()
    # the expected version is right: only the epoch refuses it, on either path
    for _ in range(2):
        with pytest.raises(LeaseLost):
            await a.transact(run_write("run:1", 2, first, "stale"))
        a._writer.forget()
    assert await a.head_position() == head
    await b.transact(run_write("run:1", 2, taken, "b1"))
    assert [e.data["t"] for e in await a.read_stream("run:1")] == ["a1", "a2", "b1"]
    # released at the new epoch: the old one stays fenced off
    await b.release_lease("run_1", taken.epoch)
    with pytest.raises(LeaseLost):
        await a.transact(run_write("run:1", 3, first, "after release"))


async def test_a_fenced_caller_fails_alone_in_its_batch(nodes: StoreFactory) -> None:
    a, b = await nodes(), await nodes()
    stale = Fence("run_s", await a.acquire_lease("run_s", "node-a", 30))
    await b.acquire_lease("run_s", "node-b", 30)
    live = Fence("run_l", await a.acquire_lease("run_l", "node-a", 30))
    calls = [
        a.transact(run_write("run:s", 0, stale, "no")),
        a.transact(run_write("run:l", 0, live, "yes")),
        a.transact([AppendRequest("plain", (NewEvent("x", {"t": "yes"}),), 0)]),
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(outcomes[0], LeaseLost)
    assert not isinstance(outcomes[1], BaseException)
    assert not isinstance(outcomes[2], BaseException)
    assert await a.stream_version("run:s") == 0
    assert await a.stream_version("run:l") == 1


async def test_a_takeover_racing_a_write_fences_it_or_follows_it(nodes: StoreFactory) -> None:
    """Whatever the interleaving, no write under the old epoch commits after the takeover."""
    a, b = await nodes(), await nodes()
    for round_ in range(10):
        run = f"run_{round_}"
        old = Fence(run, await a.acquire_lease(run, "node-a", 30))
        writes = [a.transact(run_write(f"run:{round_}", v, old, f"a{v}")) for v in range(1)]
        take = b.acquire_lease(run, "node-b", 30)
        *_, epoch = await asyncio.gather(*writes, take, return_exceptions=True)
        assert isinstance(epoch, int)
        taken_at = await b.head_position()
        with pytest.raises(LeaseLost):
            await a.transact(run_write(f"run:{round_}", 1, old, "late"))
        events = await b.read_stream(f"run:{round_}")
        assert all(e.position <= taken_at for e in events)


async def test_appends_from_several_nodes_at_once_all_land_gapless(nodes: StoreFactory) -> None:
    stores = [await nodes() for _ in range(3)]

    async def appender(store: PostgresEventStore, name: str) -> None:
        for version in range(15):
            await store.append(name, [NewEvent("x", {"v": version})], expected_version=version)

    await asyncio.gather(
        *(appender(s, f"s{i}-{j}") for i, s in enumerate(stores) for j in range(4))
    )
    events = await whole_log(stores[0])
    assert len(events) == 3 * 4 * 15
    assert_chained_and_gapless(events)


async def test_a_writer_that_keeps_losing_reserves_the_head(nodes: StoreFactory) -> None:
    store = await nodes(lease_ttl_s=2.0)
    conn = await asyncpg.connect(DSN, server_settings={"search_path": store.schema or ""})
    try:
        # another writer's reservation: this store's conditional writes are refused
        # until it lapses, then this store reserves the head itself and writes
        assert await conn.fetchval(sql.RESERVE_HEAD, "someone-else", 0.3) is not None
        await store.append("r", [NewEvent("x", {})], expected_version=0)
        # its write gave the reservation up
        assert await conn.fetchval("SELECT reserved_by FROM log_head") is None
    finally:
        await conn.close()
    assert store._writer.races_lost >= 1
    assert store._writer.reservations >= 1
    assert_chained_and_gapless(await whole_log(store))


async def test_a_transaction_left_holding_the_head_lock_is_ended_within_the_bound(
    nodes: StoreFactory,
) -> None:
    """A rebuild or import on a node paused mid-transaction: the server ends it after the
    lease-derived idle bound, and the other nodes' appends go on."""
    ttl = 1.0
    holder = await nodes(lease_ttl_s=ttl)
    other = await nodes(lease_ttl_s=ttl)
    assert holder.bounds.held_idle_s == ttl / 2
    conn = await asyncpg.connect(DSN, server_settings={"search_path": holder.schema or ""})
    try:
        await conn.execute("BEGIN")
        await conn.execute(holder._lock_head())  # as a rebuild or an import takes it
        # the client now goes quiet, as a paused node would; another node appends
        await asyncio.wait_for(other.append("o", [NewEvent("x", {})], expected_version=0), 10)
        with pytest.raises(
            (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
        ):
            await conn.execute("SELECT 1")  # the server ended that transaction
    finally:
        conn.terminate()
    assert await other.stream_version("o") == 1
