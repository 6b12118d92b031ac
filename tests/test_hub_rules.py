"""The hub and the subscription state machine, against an in-memory log.

No server and no database: a list of events stands in for the store, so each
rule (the buffer bound, unregistering, the fall back to the store and the way
back to live, paging) is checked exactly rather than as ">= 1".
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.hub import (
    CATCHING_UP,
    CLOSED,
    HANDOVER,
    LIVE,
    Hub,
    Subscription,
    _Listener,
)
from sessionstream.eventstore.model import GENESIS_HASH, RecordedEvent


def ev(
    position: int, stream_id: str = "session-s1", correlation: str | None = None
) -> RecordedEvent:
    return RecordedEvent(
        position, stream_id, position, f"e{position}", "x", {}, {}, correlation, "t", GENESIS_HASH
    )


class Log:
    """What a subscription needs of a store: ``read_all`` after a cursor, filtered by keys."""

    def __init__(self, events: list[RecordedEvent] | None = None) -> None:
        self.events = list(events or [])
        self.reads: list[tuple[int, int]] = []
        self.on_read: Any = None
        self.page_bytes = 1 << 20
        self.catchup = asyncio.Semaphore(4)

    async def read_all(
        self, after: int, *, limit: int, keys: frozenset[str] | None = None
    ) -> list[RecordedEvent]:
        self.reads.append((after, limit))
        if self.on_read is not None:
            self.on_read()
        found = [
            e
            for e in self.events
            if e.position > after and (keys is None or any(k in keys for k in e.keys))
        ]
        return found[:limit]

    async def read_page(
        self, after: int, *, max_rows: int, max_bytes: int, keys: frozenset[str] | None = None
    ) -> list[RecordedEvent]:
        """The rows rule only: these events are a few bytes, far inside any budget."""
        return await self.read_all(after, limit=max_rows, keys=keys)


def subscribe(log: Log, hub: Hub, after: int = 0, keys: Any = None, **kw: Any) -> Subscription:
    return Subscription(cast(EventStore, log), hub, after, keys, **kw)


async def take(sub: Subscription, n: int) -> list[int]:
    return [(await asyncio.wait_for(sub.__anext__(), 2)).position for _ in range(n)]


async def until_live(sub: Subscription) -> None:
    """Drive the subscription until it waits on its buffer."""
    task = asyncio.ensure_future(sub.__anext__())
    for _ in range(50):
        await asyncio.sleep(0)
        if sub.state == LIVE:
            break
    assert sub.state == LIVE
    sub._test_task = task  # type: ignore[attr-defined]


# the listener ------------------------------------------------------------------------------


def test_the_buffer_holds_exactly_max_queue_events() -> None:
    listener = _Listener(None, max_queue=3)
    for p in (1, 2, 3):
        listener.push(ev(p))
    assert [e.position for e in listener.buffer] == [1, 2, 3]
    assert not listener.lagged and listener.wakeup.is_set()
    listener.push(ev(4))  # one more than it may hold: dropped, and it must read the store
    assert listener.lagged and len(listener.buffer) == 0
    listener.wakeup.clear()
    listener.push(ev(5))  # once lagged, nothing more is buffered or signalled
    assert len(listener.buffer) == 0 and not listener.wakeup.is_set()


def test_register_and_unregister_leave_no_listener_behind() -> None:
    hub = Hub(max_queue=4)
    a = hub.register(frozenset({"session-s1", "run-r1"}))
    b = hub.register(frozenset({"session-s1"}))
    c = hub.register(None)
    assert hub.listener_count == 4  # a under two keys, b, c
    hub.unregister(a)
    assert hub.listener_count == 2 and set(hub._by_key) == {"session-s1"}
    hub.unregister(b)
    assert hub._by_key == {} and hub.listener_count == 1
    hub.unregister(c)
    hub.unregister(c)  # twice is harmless
    assert hub.listener_count == 0 and hub._everything == set()


def test_publish_routes_by_stream_and_correlation_once_each() -> None:
    hub = Hub(max_queue=10)
    session = hub.register(frozenset({"session-s1"}))
    both = hub.register(frozenset({"session-s1", "run-r1"}))
    run = hub.register(frozenset({"run-r1"}))
    other = hub.register(frozenset({"session-s2"}))
    everything = hub.register(None)
    hub.publish([ev(1, "run-r1", correlation="session-s1"), ev(2, "session-s1"), ev(3, "x")])
    assert [e.position for e in session.buffer] == [1, 2]
    assert [e.position for e in both.buffer] == [1, 2]  # once, though under both keys
    assert [e.position for e in run.buffer] == [1]
    assert len(other.buffer) == 0
    assert [e.position for e in everything.buffer] == [1, 2, 3]
    assert hub.published_position == 3
    assert hub.queued_events() == 2 + 2 + 1 + 3  # a listener under two keys counts once
    hub.publish([ev(2)])  # an older position never moves it back
    assert hub.published_position == 3


def test_publish_by_correlation_alone() -> None:
    hub = Hub()
    session = hub.register(frozenset({"session-s1"}))
    hub.publish([ev(1, "run-r1", correlation="session-s1"), ev(2, "run-r2", correlation="x")])
    assert [e.position for e in session.buffer] == [1]


def test_publish_with_only_unkeyed_listeners() -> None:
    hub = Hub()
    everything = hub.register(None)
    hub.publish([ev(1), ev(2, "run-r1", correlation="session-s1")])
    assert [e.position for e in everything.buffer] == [1, 2]
    assert hub.queued_events() == 2


# the subscription --------------------------------------------------------------------------


async def test_paged_catch_up_reads_every_page_then_goes_live() -> None:
    log = Log([ev(p) for p in range(1, 6)])
    hub = Hub()
    sub = subscribe(log, hub, page_size=2)
    assert sub.state == CATCHING_UP and sub.cursor == 0
    assert await take(sub, 5) == [1, 2, 3, 4, 5]
    assert log.reads == [(0, 2), (2, 2), (4, 2)]
    assert sub.cursor == 5 and hub.listener_count == 0
    await until_live(sub)
    # an empty page registers (handover), a second empty read goes live
    assert log.reads[3:] == [(5, 2), (5, 2)] and hub.listener_count == 1
    hub.publish([ev(6)])
    assert await asyncio.wait_for(sub._test_task, 2) == ev(6)  # type: ignore[attr-defined]
    assert sub.cursor == 6
    sub.close()


async def test_catch_up_reads_no_further_than_published_where_the_hub_says_so() -> None:
    """PostgreSQL's log may hold a commit that is not durable yet (its wait for the
    standby cut short): a catch-up that read it would send a frame a failover takes
    back. There the hub publishes only durable commits, and catch-up stops at them."""

    class BoundedLog(Log):
        async def read_page(
            self,
            after: int,
            *,
            max_rows: int,
            max_bytes: int,
            keys: frozenset[str] | None = None,
            to_position: int | None = None,
        ) -> list[RecordedEvent]:
            page = await self.read_all(after, limit=max_rows, keys=keys)
            return [e for e in page if to_position is None or e.position <= to_position]

    log = BoundedLog([ev(p) for p in range(1, 6)])
    hub = Hub()
    hub.read_to_published = True
    hub.published_position = 3  # 4 and 5 are in the log, not durable yet
    sub = subscribe(log, hub)
    assert await take(sub, 3) == [1, 2, 3]
    await until_live(sub)  # 4 and 5 were not read: the subscription waits for the hub
    hub.publish([ev(4)])
    assert await asyncio.wait_for(sub._test_task, 2) == ev(4)  # type: ignore[attr-defined]
    hub.read_to_published = False  # elsewhere (SQLite) the log holds nothing unpublished
    assert await take(subscribe(log, Hub()), 5) == [1, 2, 3, 4, 5]
    sub.close()


async def test_handover_does_not_lose_or_repeat_an_event() -> None:
    log = Log([ev(1)])
    hub = Hub()
    sub = subscribe(log, hub)
    assert await take(sub, 1) == [1]

    def commit_during_handover() -> None:
        if sub.state == HANDOVER and len(log.events) == 1:
            log.events.append(ev(2))  # committed between the last page and registration,
            hub.publish([ev(2)])  # and also published into the new buffer

    log.on_read = commit_during_handover
    assert await take(sub, 1) == [2]
    await until_live(sub)
    hub.publish([ev(3)])
    assert await asyncio.wait_for(sub._test_task, 2) == ev(3)  # type: ignore[attr-defined]
    sub.close()


async def test_closing_unregisters_the_listener() -> None:
    hub = Hub()
    log = Log()
    subs = [subscribe(log, hub, keys=frozenset({"session-s1", "run-r1"})) for _ in range(3)]
    subs.append(subscribe(log, hub))
    for sub in subs:
        await until_live(sub)
    assert hub.listener_count == 3 * 2 + 1
    assert sum(s.pending_live() for s in subs) == 0
    for sub in subs:
        await sub.aclose()
        assert sub.state == CLOSED
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(sub._test_task, 2)  # type: ignore[attr-defined]
    assert hub.listener_count == 0 and hub._by_key == {} and hub._everything == set()
    sub.close()  # closing again is harmless
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()


async def test_a_lagging_subscriber_reads_the_store_and_returns_to_live() -> None:
    log = Log()
    hub = Hub(max_queue=2)
    sub = subscribe(log, hub, page_size=2)
    await until_live(sub)
    first = ev(1)
    log.events.append(first)
    hub.publish([first])
    assert await asyncio.wait_for(sub._test_task, 2) == first  # type: ignore[attr-defined]
    burst = [ev(p) for p in range(2, 7)]  # five events into a buffer of two: it overflows
    log.events.extend(burst)
    hub.publish(burst)
    assert sub.pending_live() == 0 and hub.listener_count == 1
    assert await take(sub, 5) == [2, 3, 4, 5, 6]
    assert (sub.lag_fallbacks, hub.lag_fallbacks) == (1, 1)
    await until_live(sub)
    assert hub.listener_count == 1
    hub.publish([ev(7)])
    assert sub.pending_live() == 1
    assert await asyncio.wait_for(sub._test_task, 2) == ev(7)  # type: ignore[attr-defined]
    assert (sub.lag_fallbacks, hub.lag_fallbacks, sub.cursor) == (1, 1, 7)
    sub.close()
    assert hub.listener_count == 0


async def test_a_live_subscriber_skips_what_it_already_delivered() -> None:
    log = Log([ev(1), ev(2)])
    hub = Hub()
    sub = subscribe(log, hub, after=1)
    assert await take(sub, 1) == [2]
    await until_live(sub)
    hub.publish([ev(1), ev(2), ev(3)])  # at or before the cursor: skipped
    assert await asyncio.wait_for(sub._test_task, 2) == ev(3)  # type: ignore[attr-defined]
    sub.close()


async def test_closing_while_a_page_is_read_stops() -> None:
    log = Log([ev(1)])
    hub = Hub()
    sub = subscribe(log, hub)
    log.on_read = sub.close
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()
    assert hub.listener_count == 0


async def test_a_keyed_subscription_reads_only_its_keys_with_the_default_page() -> None:
    log = Log([ev(1, "session-s1"), ev(2, "session-s2"), ev(3, "run-r1", correlation="session-s1")])
    hub = Hub()
    sub = subscribe(log, hub, keys=frozenset({"session-s1"}))
    assert sub.pending_live() == 0  # no listener yet
    assert await take(sub, 2) == [1, 3]
    assert log.reads == [(0, 500)]
    await until_live(sub)
    sub.close()
    assert sub.pending_live() == 0


async def test_every_fall_back_is_counted() -> None:
    log = Log()
    hub = Hub(max_queue=1)
    subs = [subscribe(log, hub), subscribe(log, hub)]
    position = 0
    for round_ in (1, 2):
        for sub in subs:
            await until_live(sub)
        burst = [ev(position + 1), ev(position + 2)]  # two into a buffer of one
        position += 2
        log.events.extend(burst)
        hub.publish(burst)
        for sub in subs:
            got = [(await asyncio.wait_for(sub._test_task, 2)).position]  # type: ignore[attr-defined]
            assert got + await take(sub, 1) == [position - 1, position]
            assert sub.lag_fallbacks == round_
        assert hub.lag_fallbacks == 2 * round_
    for sub in subs:
        sub.close()


async def test_a_crowd_catching_up_reads_at_most_catchup_reads_pages_at_once() -> None:
    class SlowLog(Log):
        """Each page read takes a few loop turns, so overlapping reads would show."""

        def __init__(self, events: list[RecordedEvent]) -> None:
            super().__init__(events)
            self.reading = 0
            self.most = 0

        async def read_page(
            self, after: int, *, max_rows: int, max_bytes: int, keys: frozenset[str] | None = None
        ) -> list[RecordedEvent]:
            self.reading += 1
            self.most = max(self.most, self.reading)
            await asyncio.sleep(0.001)
            self.reading -= 1
            return await self.read_all(after, limit=max_rows, keys=keys)

    log = SlowLog([ev(p) for p in range(1, 31)])
    log.catchup = asyncio.Semaphore(3)
    hub = Hub()
    subs = [subscribe(log, hub, page_size=4) for _ in range(20)]
    got = await asyncio.gather(*(take(sub, 30) for sub in subs))
    assert got == [list(range(1, 31))] * 20
    assert log.most == 3  # the crowd was admitted three pages at a time, and did overlap


async def test_on_idle_is_called_each_time_it_is_live_with_nothing_to_hand_out() -> None:
    """The moment a caught-up reader can be handed to a fanout with no event coming."""
    log = Log([ev(1)])
    hub = Hub()
    sub = subscribe(log, hub)
    seen: list[tuple[str, int, int]] = []
    sub.on_idle = lambda: seen.append((sub.state, sub.cursor, sub.pending_live()))
    assert await take(sub, 1) == [1]
    assert seen == []  # catching up, then handing over: not idle yet
    await until_live(sub)
    assert seen == [(LIVE, 1, 0)]
    hub.publish([ev(2), ev(3)])
    assert await asyncio.wait_for(sub._test_task, 2) == ev(2)  # type: ignore[attr-defined]
    assert await take(sub, 1) == [3]
    assert seen == [(LIVE, 1, 0)]  # not while events were buffered
    await until_live(sub)
    assert seen == [(LIVE, 1, 0), (LIVE, 3, 0)]
    sub.close()


async def test_a_subscription_closed_by_its_idle_callback_ends() -> None:
    log = Log([ev(1)])
    hub = Hub()
    sub = subscribe(log, hub)
    sub.on_idle = sub.close  # what handing the reader to a fanout does
    assert await take(sub, 1) == [1]
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(sub.__anext__(), 2)
    assert sub.state == CLOSED and hub.listener_count == 0


# defaults and the catch-up byte budget -----------------------------------------------------


def test_a_new_hub_has_delivered_nothing_and_buffers_1024_events_a_subscriber() -> None:
    # docs/guides/realtime.md: "a bounded queue (SESSIONSTREAM_SUBSCRIBER_QUEUE, 1024 events)"
    hub = Hub()
    assert hub.max_queue == 1024
    assert hub.published_position == 0  # the delivered position heartbeats report
    hub.publish([ev(1)])
    assert hub.published_position == 1


class Budgeted(Log):
    """A log whose pages also keep to a byte budget: each event is 100 bytes, and a page
    holds at least one event whatever the budget."""

    async def read_page(
        self, after: int, *, max_rows: int, max_bytes: int, keys: frozenset[str] | None = None
    ) -> list[RecordedEvent]:
        rows = await self.read_all(after, limit=max_rows, keys=keys)
        return rows[: max(1, max_bytes // 100)]


async def test_catch_up_pages_keep_to_the_stores_byte_budget() -> None:
    log = Budgeted([ev(p) for p in range(1, 6)])
    log.page_bytes = 250  # two events a page
    sub = subscribe(log, Hub())
    assert await take(sub, 5) == [1, 2, 3, 4, 5]
    assert [after for after, _ in log.reads][:3] == [0, 2, 4]
    await sub.aclose()
