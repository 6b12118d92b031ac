"""In-process fan-out of committed events, and the subscription state machine.

A subscription is a tail of the log from a cursor. It moves through explicit
states:

``catching_up``  reading pages from the store after its cursor (pages bounded
                 in rows and bytes, admitted a few at a time by the store's
                 ``catchup`` semaphore);
``handover``     registered with the hub, reading the store once more so an
                 event committed between the last page and registration is
                 not lost (anything also buffered is skipped by cursor);
``live``         taking events from its bounded buffer as they are published.

When a live subscriber's buffer overflows it is not allowed to grow memory or
to slow the publisher: its buffer is dropped and it goes back to
``catching_up``, reading what it missed from the store. Delivery is exactly
once and in position order in every state because the cursor only moves
forward and every event at or before it is skipped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from sessionstream.eventstore.model import RecordedEvent

if TYPE_CHECKING:
    from sessionstream.eventstore.base import EventStore

CATCHING_UP = "catching_up"
HANDOVER = "handover"
LIVE = "live"
CLOSED = "closed"


class _Listener:
    __slots__ = ("buffer", "keys", "lagged", "max_queue", "wakeup")

    def __init__(self, keys: frozenset[str] | None, max_queue: int) -> None:
        self.keys = keys
        self.buffer: deque[RecordedEvent] = deque()
        self.wakeup = asyncio.Event()
        self.lagged = False
        self.max_queue = max_queue

    def push(self, event: RecordedEvent) -> None:
        if self.lagged:
            return
        if len(self.buffer) >= self.max_queue:
            self.lagged = True
            self.buffer.clear()
        else:
            self.buffer.append(event)
        self.wakeup.set()


class Hub:
    """Routes each published event to the listeners registered for its keys."""

    def __init__(self, *, max_queue: int = 1024) -> None:
        self.max_queue = max_queue
        self._by_key: dict[str, set[_Listener]] = {}
        self._everything: set[_Listener] = set()
        self.published_position = 0
        self.lag_fallbacks = 0
        #: catch-up reads no further than what was published: set where the log may hold
        #: commits that are not durable yet (PostgreSQL: a commit a failover takes back,
        #: docs/guides/failover.md); they come through the listener once published
        self.read_to_published = False

    @property
    def listener_count(self) -> int:
        return len(self._everything) + sum(len(s) for s in self._by_key.values())

    def queued_events(self) -> int:
        """Events buffered for all listeners, each listener once whatever its key count."""
        listeners = self._everything.union(*self._by_key.values())
        return sum(len(listener.buffer) for listener in listeners)

    def register(self, keys: frozenset[str] | None) -> _Listener:
        listener = _Listener(keys, self.max_queue)
        if keys is None:
            self._everything.add(listener)
        else:
            for key in keys:
                self._by_key.setdefault(key, set()).add(listener)
        return listener

    def unregister(self, listener: _Listener) -> None:
        if listener.keys is None:
            self._everything.discard(listener)
            return
        for key in listener.keys:
            listeners = self._by_key.get(key)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._by_key[key]

    def publish(self, events: Iterable[RecordedEvent]) -> None:
        """Deliver committed events; callers publish in position order.

        ``published_position`` moves past an event only once every listener
        has it: if a push raises, the supervised caller publishes again from
        there, and listeners that already had the event skip it by cursor.
        """
        by_key = self._by_key
        for event in events:
            for listener in self._everything:
                listener.push(event)
            if by_key:
                targets = by_key.get(event.stream_id)
                if event.correlation_id is not None:
                    extra = by_key.get(event.correlation_id)
                    if extra:
                        targets = extra if not targets else targets | extra
                if targets:
                    for listener in targets:
                        listener.push(event)
            if event.position > self.published_position:
                self.published_position = event.position


class Subscription:
    """Async iterator over events after a cursor; see the module docstring."""

    def __init__(
        self,
        store: EventStore,
        hub: Hub,
        after_position: int,
        keys: frozenset[str] | None,
        *,
        page_size: int = 500,
    ) -> None:
        self._store = store
        self._hub = hub
        self.keys = keys
        self.cursor = after_position
        self.state = CATCHING_UP
        self.lag_fallbacks = 0
        self._page_size = page_size
        self._pending: deque[RecordedEvent] = deque()
        self._listener: _Listener | None = None
        #: called each time the subscription is live with nothing to hand out, just before
        #: it waits: the moment a reader that has caught up can be handed to a fanout even
        #: if no event comes (a paused run); it may close the subscription
        self.on_idle: Callable[[], None] | None = None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> RecordedEvent:
        while True:
            if self.state == CLOSED:
                raise StopAsyncIteration
            if self._pending:
                event = self._pending.popleft()
                self.cursor = event.position
                return event
            listener = self._listener
            if listener is not None and listener.lagged:
                self._hub.unregister(listener)
                self._listener = None
                self._hub.lag_fallbacks += 1
                self.lag_fallbacks += 1
                self.state = CATCHING_UP
                continue
            if self.state == LIVE and listener is not None:
                while listener.buffer:
                    event = listener.buffer.popleft()
                    if event.position > self.cursor:
                        self.cursor = event.position
                        return event
                if self.on_idle is not None:
                    self.on_idle()
                    if self.state == CLOSED:
                        raise StopAsyncIteration
                listener.wakeup.clear()
                await listener.wakeup.wait()
                continue
            store = self._store
            hub = self._hub
            bound = {"to_position": hub.published_position} if hub.read_to_published else {}
            async with store.catchup:  # a crowd catching up reads a few pages at a time
                page = await store.read_page(
                    self.cursor,
                    max_rows=self._page_size,
                    max_bytes=store.page_bytes,
                    keys=self.keys,
                    **bound,
                )
            if self.state == CLOSED:
                raise StopAsyncIteration
            if page:
                self._pending.extend(page)
            elif self.state == CATCHING_UP:
                self._listener = self._hub.register(self.keys)
                self.state = HANDOVER
            else:
                self.state = LIVE

    def pending_live(self) -> int:
        """Events buffered but not yet taken (for queue-depth metrics)."""
        return len(self._listener.buffer) if self._listener else 0

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self.state = CLOSED
        if self._listener is not None:
            self._hub.unregister(self._listener)
            self._listener.wakeup.set()
            self._listener = None
