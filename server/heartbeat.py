"""Heartbeats: what lets a subscriber tell a quiet channel from a node that stopped delivering.

A subscriber of a session that is quiet and one whose node's event pump
died saw the same thing: nothing. So every open channel gets, every
``delivery_heartbeat_s``, the node's delivery state::

    {"type": "heartbeat", "delivered": 1042, "head": 1042, "stalled": false, "at": "..."}

``delivered`` is the last log position this node handed to its subscribers
(the hub's published position), ``head`` the newest position it knows was
committed (``EventStore.known_head``: on PostgreSQL ``NOTIFY`` keeps moving
it while a stalled pump does not), and ``stalled`` is true while a task live
delivery depends on is down (``EventStore.delivery_tasks``, as the
supervisor sees them) or while ``head`` has been ahead of ``delivered`` for
a whole interval without ``delivered`` moving. A client that reads
``stalled`` (or that misses heartbeats altogether) reconnects, through the
load balancer, to a node that delivers.

The frame has neither ``seq`` nor ``position``: a client that resumes by
either field, and knows nothing of heartbeats, skips it. On websockets it is
a text frame written by one task to every websocket of the node, encoded
once per beat; SSE channels send it in place of the keep-alive comment, as
``event: heartbeat`` without an ``id:`` (so ``EventSource`` keeps its
``Last-Event-ID`` and ``onmessage`` never sees it); the Trigger.dev stream,
whose SDK takes any ``data:`` for a chunk, carries it in the ``: ping``
comment, which its parser ignores.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import utc_now
from sessionstream.server.frames import dumps, ws_text_frame
from sessionstream.server.tail import Tails

HEARTBEAT = "heartbeat"


class Heartbeats:
    """The node's delivery state, and the task that sends it to every websocket."""

    def __init__(self, store: EventStore, tails: Tails, *, interval_s: float) -> None:
        self.store = store
        self.tails = tails
        self.interval_s = interval_s
        self._delivered = store.hub.published_position
        #: since when ``head`` has been ahead of an unmoving ``delivered`` (None: it is not)
        self._behind_since: float | None = None
        #: heartbeat frames written to websockets (for the tests and the metrics)
        self.sent = 0

    def state(self) -> dict[str, Any]:
        store = self.store
        delivered = store.hub.published_position
        head = max(store.known_head(), delivered)
        now = time.monotonic()
        if delivered != self._delivered or head <= delivered:
            self._delivered, self._behind_since = delivered, None
        if head > delivered and self._behind_since is None:
            self._behind_since = now  # a commit the pump has not had time to publish yet
        # behind for (about) a whole interval, not merely when a beat met a fresh commit
        behind = self._behind_since is not None and now - self._behind_since >= (
            0.9 * self.interval_s
        )
        supervisor = store.supervisor
        down = any(supervisor.down(name) is not None for name in store.delivery_tasks)
        return {
            "type": HEARTBEAT,
            "delivered": delivered,
            "head": head,
            "stalled": down or behind,
            "at": utc_now(),
        }

    def text(self) -> str:
        return dumps(self.state())

    def sse(self) -> bytes:
        """The SSE keep-alive: still a ``: ping`` comment, then the heartbeat event."""
        return f": ping\nevent: {HEARTBEAT}\ndata: {self.text()}\n\n".encode()

    def comment(self) -> bytes:
        """The Trigger.dev stream's keep-alive: a comment, so its SDK never sees a chunk."""
        return f": ping {self.text()}\n\n".encode()

    def beat(self) -> int:
        """Write one heartbeat to every open websocket that is keeping up; how many."""
        wire: bytes | None = None
        count = 0
        for conn in list(self.tails.live):
            transport, ws = conn.transport, conn.ws
            if transport is None or ws is None or ws.closed or transport.is_closing():
                continue
            if conn.end is not None or transport.get_write_buffer_size() > conn.high:
                continue  # stopping, or behind: its next frame will say more than a beat
            if wire is None:
                wire = ws_text_frame(self.text().encode())
            transport.write(wire)
            count += 1
        self.sent += count
        return count

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.beat()

    async def ctx(self, _app: web.Application) -> AsyncIterator[None]:
        task = self.store.supervisor.spawn("heartbeat", self._every_interval)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
