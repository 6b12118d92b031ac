"""PostgreSQL appends planned on what the writer knows (``eventstore/postgres/known.py``).

A batch whose facts the writer already holds is written in one statement that
checks the head; these tests show it is taken when nothing else wrote, and
that whatever else wrote (another node, a rogue row, a retry) sends the batch
down the sure path with the same answers the sure path alone would give.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sessionstream.core.errors import ConcurrencyConflict
from sessionstream.core.vocabulary import EventType, session_stream
from sessionstream.eventstore.model import GENESIS_HASH, NewEvent, RecordedEvent, recompute_hash
from tests.pg import DSN, StoreFactory, node_opener, throwaway_schema

asyncpg = pytest.importorskip("asyncpg")

from sessionstream.eventstore.postgres import PostgresEventStore  # noqa: E402

pytestmark = pytest.mark.postgres


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_pgk"):
        yield name


@pytest.fixture
async def nodes(schema: str) -> AsyncIterator[StoreFactory]:
    async for open_node in node_opener(schema, pool_size=2):
        yield open_node


def paths(store: PostgresEventStore) -> tuple[int, int]:
    """(batches written in one round trip, batches read under the lock) so far."""
    writer = store._writer
    return writer.planned_on_known, writer.read_under_lock


async def whole_log(store: PostgresEventStore) -> list[RecordedEvent]:
    return await store.read_all(0, limit=10_000)


def assert_chained_and_gapless(events: list[RecordedEvent]) -> None:
    assert [e.position for e in events] == list(range(1, len(events) + 1))
    heads: dict[str, tuple[int, str]] = {}
    for event in events:
        version, prev = heads.get(event.stream_id, (0, GENESIS_HASH))
        assert event.version == version + 1, event
        assert recompute_hash(prev, event) == event.hash, event
        heads[event.stream_id] = (event.version, event.hash)


async def test_sequential_appends_after_the_first_take_one_round_trip(
    nodes: StoreFactory,
) -> None:
    store = await nodes()
    for version in range(5):
        await store.append("s", [NewEvent("x", {"i": version})], expected_version=version)
    # the first read the stream (absent); the four after it were planned on what it learned
    assert paths(store) == (4, 1)
    assert_chained_and_gapless(await whole_log(store))


async def test_another_nodes_write_sends_the_next_batch_down_the_sure_path(
    nodes: StoreFactory,
) -> None:
    a, b = await nodes(), await nodes()
    await a.append("s", [NewEvent("x", {})], expected_version=0)
    await a.append("s", [NewEvent("x", {})], expected_version=1)
    await b.append("s", [NewEvent("x", {"by": "b"})], expected_version=2)
    # a still believes the stream is at version 2: the head it planned on moved
    with pytest.raises(ConcurrencyConflict):
        await a.append("s", [NewEvent("x", {"by": "a"})], expected_version=2)
    appended = await a.append("s", [NewEvent("x", {"by": "a"})], expected_version=3)
    assert appended.version == 4 and appended.events[0].position == 4
    assert_chained_and_gapless(await whole_log(a))


async def test_a_document_folds_what_another_node_appended(nodes: StoreFactory) -> None:
    a, b = await nodes(), await nodes()
    sid = "s1"
    created = {"id": sid, "user_id": "u", "campaign_id": "c", "node_id": "n"}
    await a.append(session_stream(sid), [NewEvent(EventType.SESSION_CREATED, created)])

    def patch(title: str) -> list[NewEvent]:
        return [NewEvent(EventType.SESSION_PATCHED, {"fields": {"title": title}})]

    await a.append(session_stream(sid), patch("a1"), expected_version=1)
    await b.append(session_stream(sid), patch("b"), expected_version=2)
    result = await a.append(session_stream(sid), patch("a2"), expected_version=3)
    doc = result.doc("session", sid)
    assert doc is not None and doc.version == 4 and doc.body["row"]["title"] == "a2"
    stored = await b.get_doc("session", sid)
    assert stored is not None and stored.body == doc.body


async def test_a_retry_planned_on_known_facts_is_still_a_no_op(nodes: StoreFactory) -> None:
    store = await nodes()
    event = NewEvent("x", {"n": 1})
    first = await store.append("s", [event], expected_version=0)
    await store.append("s", [NewEvent("x", {"n": 2})], expected_version=1)
    again = await store.append("s", [event])  # no expected version: planned as new
    assert again.duplicate and again.events == first.events
    assert len(await whole_log(store)) == 2


async def test_a_rogue_row_at_the_head_is_seen_before_the_next_write(
    schema: str, nodes: StoreFactory
) -> None:
    store = await nodes()
    await store.append("s", [NewEvent("x", {})], expected_version=0)
    conn = await asyncpg.connect(DSN)
    try:  # written behind the store's back, moving the head as every append does
        await conn.execute(
            f'INSERT INTO "{schema}".events VALUES '
            "(2, 's', 2, 'rogue-2', 'x', '{}', '{}', NULL, '2020-01-01T00:00:00.000Z', '');"
            f'UPDATE "{schema}".streams SET version = 2; '
            f'UPDATE "{schema}".log_head SET head = 2'
        )
    finally:
        await conn.close()
    with pytest.raises(ConcurrencyConflict):
        await store.append("s", [NewEvent("x", {})], expected_version=1)
    appended = await store.append("s", [NewEvent("x", {})], expected_version=2)
    assert appended.events[0].position == 3


async def test_concurrent_appenders_on_two_nodes_stay_gapless(nodes: StoreFactory) -> None:
    a, b = await nodes(), await nodes()

    async def appender(store: PostgresEventStore, name: str) -> None:
        for version in range(15):
            await store.append(name, [NewEvent("x", {"v": version})], expected_version=version)

    await asyncio.gather(
        *(appender(a, f"a-{n}") for n in range(4)), *(appender(b, f"b-{n}") for n in range(4))
    )
    log = await whole_log(a)
    assert len(log) == 8 * 15
    assert_chained_and_gapless(log)
