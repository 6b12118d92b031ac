"""What a realtime channel is made of: its state, its encoded frames, and the fanout.

A ``Connection`` is one open channel. Each event is encoded once
(``FrameCache``: the JSON text for SSE and the complete websocket frame) and
the caught-up subscribers of one run or session share one ``Fanout`` task
that writes those bytes to each socket. ``server/realtime.py`` authorises,
admits and catches connections up, then hands them to a fanout.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass, field

from aiohttp import web

from sessionstream.core.vocabulary import RUN_PREFIX, TERMINAL
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.hub import Subscription
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.server.frames import chat_stream_event, dumps

log = logging.getLogger("sessionstream.realtime")

#: the reason of the normal close that ends a run channel (clients stop on it)
RUN_FINISHED = "run finished"
RUN_END = (1000, RUN_FINISHED)


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked, final websocket text frame (RFC 6455 5.2), as a server sends it."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class FrameCache:
    """Each event is encoded once and shared by every subscriber that sends it.

    Both spellings are kept: the JSON text (SSE) and the complete websocket
    frame, header included, so a websocket send is one ``transport.write``
    of shared bytes. Keyed by global position (unique in one log); the newest
    entries cover every live subscriber, and one catching up from further
    back simply encodes again.
    """

    __slots__ = ("_frames", "encoded", "hits", "size")

    def __init__(self, size: int = 2048) -> None:
        self._frames: dict[int, tuple[str, bytes]] = {}
        self.size = size
        self.hits = 0
        self.encoded = 0

    def _entry(self, event: RecordedEvent) -> tuple[str, bytes]:
        entry = self._frames.get(event.position)
        if entry is not None:
            self.hits += 1
            return entry
        text = dumps(chat_stream_event(event))
        entry = (text, ws_text_frame(text.encode()))
        self.encoded += 1
        frames = self._frames
        frames[event.position] = entry
        if len(frames) > self.size:
            del frames[next(iter(frames))]
        return entry

    def text(self, event: RecordedEvent) -> str:
        return self._entry(event)[0]

    def wire(self, event: RecordedEvent) -> bytes:
        return self._entry(event)[1]


@dataclass(slots=True)
class RealtimeStats:
    """Counters and gauges a metrics module (or a test) reads; updated on the hot path."""

    open: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, transport)
    opened: dict[tuple[str, str], int] = field(default_factory=dict)
    by_user: dict[str, int] = field(default_factory=dict)
    refused: dict[int, int] = field(default_factory=dict)  # HTTP status
    closes: dict[int, int] = field(default_factory=dict)  # close code sent
    frames_sent: int = 0
    resumed: int = 0
    compact_starts: int = 0
    resyncs: int = 0
    too_slow: int = 0
    lag_fallbacks: int = 0
    #: caught-up subscribers that joined their key's fanout
    joined: int = 0
    #: subscribers handed back from a fanout to their own (catch-up) path: they fell behind
    detached: int = 0

    @property
    def connections(self) -> int:
        return sum(self.open.values())

    def count_close(self, code: int) -> None:
        self.closes[code] = self.closes.get(code, 0) + 1


@dataclass(frozen=True, slots=True)
class Channel:
    """A resolved, authorised subscription request: where to start and what to send."""

    kind: str  # "run" | "session"
    user_id: str
    keys: frozenset[str]
    after_position: int
    #: a finished run whose terminal event the client already has: nothing to send
    finished: bool = False
    snapshot: str | None = None
    snapshot_seq: int = 0
    expires_at: float | None = None  # epoch seconds, for run tokens
    resumed: bool = False


class Connection:
    """One open websocket (or SSE) channel and where its frames stand.

    ``cursor`` is the position of the last event written to the client.
    A connection sends from its own ``subscription`` until it is caught up,
    then joins its key's ``Fanout`` (``fanout`` set, ``released`` pending)
    until that hands it back. ``end`` says why the server stopped it.
    """

    __slots__ = (
        "channel",
        "cursor",
        "end",
        "fanout",
        "high",
        "released",
        "subscription",
        "transport",
        "ws",
    )

    def __init__(self, channel: Channel, subscription: Subscription) -> None:
        self.channel = channel
        self.subscription = subscription
        self.cursor = channel.after_position
        self.end: tuple[int, str] | None = None
        self.fanout: Fanout | None = None
        self.released: asyncio.Future[tuple[int, str] | None] | None = None
        self.transport: asyncio.Transport | None = None
        self.ws: web.WebSocketResponse | None = None
        self.high = 0

    @property
    def key(self) -> str:
        return next(iter(self.channel.keys))

    def stop(self, code: int, reason: str) -> None:
        """End the channel with ``code`` (0: the client is gone, nothing to send)."""
        if self.end is None:
            self.end = (code, reason)
        self.subscription.close()
        if self.fanout is not None:
            self.fanout.release(self, self.end)


#: a fanout hands a subscriber back to its own subscription (it fell behind)
DETACHED = (0, "detached")
#: the connection now belongs to its key's fanout
JOINED = (0, "joined")
#: the close code of a connection whose client went away: nothing to send
GONE = 0


class Fanout:
    """One task writing a key's live events to every caught-up subscriber's socket.

    Subscribers that keep up share one hub subscription: per event, one task
    wakes and writes the shared frame bytes to each member's transport, in
    place of one task wake-up per subscriber. A member whose transport holds
    more than the high-water mark is handed back (``DETACHED``) before the
    write: it resumes on its own subscription from its cursor, which is where
    flow control (and 4408) happens. Delivery stays exactly once and in
    order: a subscriber joins only when its cursor equals the fanout's.
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
        self.task = asyncio.create_task(self._run(), name=f"fanout {key}")

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
        stats, frames = self.stats, self.frames
        try:
            async for event in self.subscription:
                wire = frames.wire(event)
                end = RUN_END if self.ends_runs and event.type in TERMINAL else None
                for conn in list(self.members):
                    transport, ws = conn.transport, conn.ws
                    if transport is None or ws is None or ws.closed or transport.is_closing():
                        self.release(conn, None)
                    elif transport.get_write_buffer_size() > conn.high:
                        stats.detached += 1
                        self.release(conn, DETACHED)
                    else:
                        transport.write(wire)
                        stats.frames_sent += 1
                        conn.cursor = event.position
                        if end is not None:
                            self.release(conn, end)
                self.cursor = event.position
                if end is not None:
                    break
        except Exception:
            log.exception("fanout of %s failed; its subscribers continue on their own", self.key)
        finally:
            self.close()
            self.stats.lag_fallbacks += self.subscription.lag_fallbacks
            for conn in list(self.members):
                self.release(conn, DETACHED)
            if self.registry.get(self.key) is self:
                del self.registry[self.key]
