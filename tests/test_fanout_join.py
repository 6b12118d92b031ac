"""Joining a run's fanout while events flow: exactly once, in order, and on the fanout.

A caught-up websocket and its run's fanout are woken by the same publish, in
no set order. A connection that has sent an event the fanout has not yet sent
must still join (or most of a crowd stays on its own subscription, reading
the store), and the fanout must then skip what the member already has.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from sessionstream import projections
from sessionstream.eventstore.hub import LIVE
from sessionstream.eventstore.model import GENESIS_HASH, NewEvent, RecordedEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.server.fanout import Fanout, join_when_caught_up
from sessionstream.server.frames import FrameCache
from sessionstream.server.realtime_stats import RealtimeStats
from sessionstream.server.tail import Channel, Connection

STREAM = "run-r1"


class Wire:
    """The two halves of a socket the fanout writes to: what it wrote, decoded."""

    closed = False

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.frames.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    s = SQLiteEventStore(tmp_path / "log.db", projections.ALL)
    await s.open()
    yield s
    await s.close()


def delta(position: int, version: int) -> RecordedEvent:
    return RecordedEvent(
        position,
        STREAM,
        version,
        f"e{position}",
        "message.delta",
        {"text": "x"},
        {},
        None,
        "2026-01-01T00:00:00.000Z",
        GENESIS_HASH,
    )


async def live_connection(store: SQLiteEventStore, after: int) -> Connection:
    channel = Channel("run", "u1", frozenset({STREAM}), after, "ref")
    conn = Connection(channel, store.subscribe(after, keys=channel.keys))
    wire = Wire()
    conn.transport, conn.ws = cast(Any, wire), cast(Any, wire)
    conn.high = 1 << 20
    return conn


async def next_event(conn: Connection) -> int:
    """Take one event on the connection's own path, as ``_send_own`` does."""
    event = await conn.subscription.__anext__()  # no task of its own: nothing runs first
    conn.cursor = event.position
    return event.position


async def until_live(conn: Connection) -> None:
    sub = conn.subscription
    idle = asyncio.Event()
    sub.on_idle = idle.set
    task = asyncio.create_task(sub.__anext__())
    await asyncio.wait_for(idle.wait(), 5)
    assert sub.state == LIVE and not sub.pending_live()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await task


async def test_a_connection_ahead_of_the_fanout_joins_and_gets_each_event_once(
    store: SQLiteEventStore,
) -> None:
    first = await store.append(STREAM, [NewEvent("run.started", {})])
    stats, frames, fanouts = RealtimeStats(), FrameCache(), dict[str, Fanout]()
    start = first.events[0].position
    leader = await live_connection(store, start)
    await until_live(leader)
    assert join_when_caught_up(leader, fanouts, store, stats, frames)
    fanout = fanouts[STREAM]
    await asyncio.sleep(0.05)  # the fanout's own subscription goes live
    late = await live_connection(store, start)
    await until_live(late)

    # published as a commit would be, with no await until the late connection runs:
    # it is woken first and sends the event on its own path ...
    second = delta(start + 1, 2)
    store.hub.publish([second])
    assert await next_event(late) == second.position
    assert fanout.cursor == start  # ... before the fanout has sent it to anyone
    assert join_when_caught_up(late, fanouts, store, stats, frames)
    assert late.fanout is fanout and stats.joined == 2

    third = delta(start + 2, 3)
    store.hub.publish([third])
    for _ in range(100):
        if fanout.cursor == third.position:
            break
        await asyncio.sleep(0.01)
    wire = cast(Wire, late.transport)
    # from the fanout: only the third event (the second it had already sent itself)
    assert wire.frames == [frames.wire(third)]
    assert late.cursor == third.position
    leader_wire = cast(Wire, leader.transport)
    assert leader_wire.frames == [frames.wire(second), frames.wire(third)]
    fanout.close()
    await asyncio.wait_for(fanout.task, 5)
