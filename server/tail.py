"""From a client's cursor to a live tail of the log: where to start, and the open tail.

Every realtime wire does the same three things once a caller is authorised:
turn its cursor (a run's seq, or a global position) into the log position
to read after, refusing a cursor that does not fit (``Resync``); subscribe
from there, which reads what is stored and then switches to live events
from the hub without a gap or a repeat (``eventstore.hub.Subscription``);
and keep that tail stoppable, by shutdown, by the run token's expiry, or by
the client leaving (``Connection.stop``). ``Tails`` owns the open ones.

A run's seq maps to a position through the run stream itself, so a client
that resumes after seq ``n`` gets exactly seq ``n + 1`` onwards. The run read
model may lag the log on another node, so a cursor beyond its ``seq`` is
checked against the stream before it is called a resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sessionstream.core.errors import Conflict
from sessionstream.core.vocabulary import run_stream, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.hub import Subscription
from sessionstream.server.access import Access
from sessionstream.server.frames import Compactor, dumps
from sessionstream.server.realtime_stats import RealtimeStats

if TYPE_CHECKING:
    from sessionstream.server.fanout import Fanout

#: the close code of a connection whose client went away: nothing to send
GONE = 0
#: statuses of a run that may still append events
ACTIVE = frozenset({"queued", "running"})


class Resync(Conflict):
    """A cursor that does not fit the stream; the client must start again from ``head``."""

    code = "resync"

    def __init__(self, message: str, *, head: int) -> None:
        super().__init__(message, details={"head": head})
        self.head = head


@dataclass(frozen=True, slots=True)
class Channel:
    """A resolved, authorised subscription request: where to start and what to send."""

    kind: str  # "run" | "session"
    user_id: str
    keys: frozenset[str]
    after_position: int
    #: the API token the right to read comes from (``Access.token_ref``)
    token_ref: str
    #: a finished run whose terminal event the client already has: nothing to send
    finished: bool = False
    snapshot: str | None = None
    snapshot_seq: int = 0
    expires_at: float | None = None  # epoch seconds, for run tokens
    resumed: bool = False


async def run_channel(
    store: EventStore,
    access: Access,
    after: int,
    *,
    cursor: str,
    resumed: bool = False,
    compact: bool = False,
) -> Channel:
    """The run channel that sends every event after seq ``after``.

    ``compact`` (only without a cursor) starts with one ``message.snapshot``
    frame folding the run so far. ``cursor`` names the client's field in a
    resync's message.
    """
    run = access.doc.body
    stream = run_stream(access.doc.key)
    head = int(run["seq"])
    if after > head:
        head = await store.stream_version(stream)  # the read model may lag a node
        if after > head:
            raise Resync(f"{cursor} {after} is beyond the run's last event (seq {head})", head=head)
    keys = frozenset({stream})
    user_id, ref, expires_at = access.user_id, access.token_ref, access.expires_at
    if run["status"] not in ACTIVE and after >= head:
        return Channel("run", user_id, keys, 0, ref, finished=True, resumed=resumed)
    if compact and after == 0:
        snapshot = await compact_run(store, stream)
        if snapshot is not None:
            return Channel(
                "run",
                user_id,
                keys,
                int(snapshot["position"]),
                ref,
                snapshot=dumps(snapshot),
                snapshot_seq=int(snapshot["seq"]),
                expires_at=expires_at,
            )
    position = await run_start(store, stream, after, head=head)
    return Channel("run", user_id, keys, position, ref, expires_at=expires_at, resumed=resumed)


async def compact_run(store: EventStore, stream: str) -> dict[str, Any] | None:
    """The run so far as one snapshot frame, folded a byte-budgeted page at a time."""
    compactor, after = Compactor(), 0
    hub = store.hub  # no further than published, where beyond may not be durable yet
    published = hub.published_position if hub.read_to_published else None
    while page := await store.read_page(
        after,
        max_rows=500,
        max_bytes=store.page_bytes,
        keys=frozenset({stream}),
        to_position=published,
    ):
        compactor.feed(page)
        after = page[-1].position
        await asyncio.sleep(0)  # a long run is folded without holding the loop
    return compactor.frame()


async def run_start(store: EventStore, stream: str, after: int, *, head: int) -> int:
    """The log position to read after, to get run ``stream``'s events after seq ``after``."""
    start = await store.position_of(stream, max(after, 1))
    if start is None:
        raise Resync(f"seq {after} is not in the run's log", head=head)
    return start if after else start - 1


async def session_channel(
    store: EventStore, access: Access, after: int, *, cursor: str, resumed: bool = False
) -> Channel:
    """The session channel: its stream and every event correlated with it, after ``after``."""
    if after > 0:
        head = await store.head_position()
        if after > head:
            raise Resync(f"{cursor} {after} is beyond the log's head (position {head})", head=head)
    keys = frozenset({session_stream(access.doc.key)})
    return Channel("session", access.user_id, keys, after, access.token_ref, resumed=resumed)


class Connection:
    """One open channel, on any wire, and where its frames stand.

    ``cursor`` is the position of the last event written to the client.
    A connection sends from its own ``subscription``; a websocket that has
    caught up may join its key's ``Fanout`` (``fanout`` set, ``released``
    pending) until that hands it back. ``end`` says why the server stopped it.
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
        """End the channel with ``code`` (``GONE``: the client left, nothing to send)."""
        if self.end is None:
            self.end = (code, reason)
        self.subscription.close()
        if self.fanout is not None:
            self.fanout.release(self, self.end)


class Tails:
    """The open connections of one process: subscribed, stoppable, stopped on expiry."""

    def __init__(self, store: EventStore, stats: RealtimeStats) -> None:
        self.store = store
        self.stats = stats
        self.live: set[Connection] = set()

    @contextlib.contextmanager
    def open(self, channel: Channel) -> Iterator[Connection]:
        """The channel's tail, registered for shutdown and stopped with 4401 on token expiry."""
        conn = Connection(channel, self.store.subscribe(channel.after_position, keys=channel.keys))
        self.live.add(conn)
        timer: asyncio.TimerHandle | None = None
        if channel.expires_at is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, channel.expires_at - time.time())
            stop = self.store.supervisor.guard("token-expiry", conn.stop)
            timer = loop.call_later(delay, stop, 4401, "the run token has expired")
        try:
            yield conn
        finally:
            if timer is not None:
                timer.cancel()
            conn.subscription.close()
            self.stats.lag_fallbacks += conn.subscription.lag_fallbacks
            self.live.discard(conn)

    def stop_all(self, code: int, reason: str) -> None:
        for conn in list(self.live):
            conn.stop(code, reason)
