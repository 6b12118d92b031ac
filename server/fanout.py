"""One task per run or session writing live events to every caught-up websocket.

Subscribers that keep up share one hub subscription: per event, one task
wakes and writes the shared frame bytes (``FrameCache``) to each member's
transport, in place of one task wake-up per subscriber; measured, that is
what lets one process deliver ~100k frames/s. Only websockets join a fanout:
their frames are whole on the wire, so the bytes go straight to the
transport, while an SSE body is chunk-encoded by its response. The
websocket wire (``server/websocket.py``) catches a connection up on its own
subscription, then hands it here with ``join_when_caught_up``.
"""

from __future__ import annotations

import asyncio

from sessionstream.core.vocabulary import RUN_PREFIX, TERMINAL
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.hub import LIVE
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.server.frames import FrameCache
from sessionstream.server.realtime_stats import RealtimeStats
from sessionstream.server.tail import Connection

#: the reason of the normal close that ends a run channel (clients stop on it)
RUN_FINISHED = "run finished"
RUN_END = (1000, RUN_FINISHED)
#: a fanout hands a subscriber back to its own subscription (it fell behind)
DETACHED = (0, "detached")


class Fanout:
    """One task writing a key's live events to every caught-up subscriber's socket.

    Subscribers that keep up share one hub subscription: per event, one task
    wakes and writes the shared frame bytes to each member's transport, in
    place of one task wake-up per subscriber. A member whose transport holds
    more than the high-water mark is handed back (``DETACHED``) before the
    write: it resumes on its own subscription from its cursor, which is where
    flow control (and 4408) happens. Delivery stays exactly once and in
    order: a subscriber joins only at or ahead of the fanout's cursor, and
    the fanout skips the events a member already has.
    """

    def __init__(
        self,
        store: EventStore,
        stats: RealtimeStats,
        frames: FrameCache,
        registry: dict[str, Fanout],
        key: str,
        cursor: int,
    ) -> None:
        self.stats = stats
        self.frames = frames
        self.registry = registry
        self.key = key
        self.cursor = cursor
        self.open = True
        self.ends_runs = key.startswith(RUN_PREFIX)
        self.members: dict[Connection, None] = {}
        self.subscription = store.subscribe(cursor, keys=frozenset({key}))
        # supervised, not restarted: a crash hands every member back to its own
        # subscription at its own cursor (``_finish``), and the next one to catch up
        # starts a new fanout; no member misses or repeats an event
        self.task = store.supervisor.spawn(f"fanout {key}", self._run, kind="fanout", restart=False)

    def join(self, conn: Connection) -> None:
        conn.fanout = self
        conn.released = asyncio.get_running_loop().create_future()
        self.members[conn] = None

    def release(self, conn: Connection, outcome: tuple[int, str] | None) -> None:
        if conn not in self.members:
            return
        del self.members[conn]
        conn.fanout = None
        if conn.released is not None and not conn.released.done():
            conn.released.set_result(outcome)
        if not self.members:
            self.close()

    def close(self) -> None:
        self.open = False
        self.subscription.close()

    async def _run(self) -> None:
        try:
            async for event in self.subscription:
                end = RUN_END if self.ends_runs and event.type in TERMINAL else None
                self._deliver(event, end)
                self.cursor = event.position
                if end is not None:
                    break
        finally:
            self._finish()

    def _deliver(self, event: RecordedEvent, end: tuple[int, str] | None) -> None:
        stats, wire = self.stats, self.frames.wire(event)
        for conn in list(self.members):
            transport, ws = conn.transport, conn.ws
            if transport is None or ws is None or ws.closed or transport.is_closing():
                self.release(conn, None)
            elif transport.get_write_buffer_size() > conn.high:
                stats.detached += 1
                self.release(conn, DETACHED)
            elif conn.cursor >= event.position:
                continue  # joined ahead of this fanout: it already has this event
            else:
                transport.write(wire)
                stats.frames_sent += 1
                conn.cursor = event.position
                if end is not None:
                    self.release(conn, end)

    def _finish(self) -> None:
        """Members left are handed back: each resumes from its own cursor, which is
        exact even when a crash came halfway through writing one event to them all."""
        self.close()
        self.stats.lag_fallbacks += self.subscription.lag_fallbacks
        for conn in list(self.members):
            self.release(conn, DETACHED)
        if self.registry.get(self.key) is self:
            del self.registry[self.key]


def join_when_caught_up(
    conn: Connection,
    fanouts: dict[str, Fanout],
    store: EventStore,
    stats: RealtimeStats,
    frames: FrameCache,
) -> bool:
    """Hand a caught-up connection to its key's fanout when their cursors meet.

    Delivery stays exactly once and in order because a connection joins only
    at or ahead of the fanout's own cursor (a connection live with nothing
    pending has every event published for its key, and the fanout, woken by
    the same publish, may not have sent the last ones yet): the fanout skips
    what the member already has. Requiring the cursors to be equal lost that
    race at every event, leaving most of a crowd on their own subscriptions.
    A fanout is started at the cursor of the first connection that is live
    with nothing pending.
    """
    subscription = conn.subscription
    if subscription.state != LIVE or subscription.pending_live():
        return False
    key = conn.key
    fanout = fanouts.get(key)
    if fanout is None or not fanout.open:
        fanout = fanouts[key] = Fanout(store, stats, frames, fanouts, key, conn.cursor)
    elif fanout.cursor > conn.cursor:
        return False  # behind the fanout: its subscription has the rest; try again later
    subscription.close()
    stats.lag_fallbacks += subscription.lag_fallbacks
    fanout.join(conn)
    stats.joined += 1
    return True
