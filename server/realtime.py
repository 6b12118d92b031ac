"""Realtime channels: a run or a session as a websocket (or SSE) tail of the log.

``GET /api/realtime/runs/{runId}``
    Every event of one run, resumable by the run's ``seq`` (``after=``), with
    an optional compact start (``compact=1``: one ``message.snapshot`` frame
    with the text so far, then only newer events). Authenticated by the run's
    ``publicAccessToken`` or the owner's API token. Ends after the terminal
    event with close 1000. ``Accept: text/event-stream`` gets the same stream
    as server-sent events (``server/sse.py``).
``GET /api/realtime/sessions/{id}``
    Every event of a session and of its runs (keys ``session-<id>``: the
    session stream plus every event correlated with it), resumable by global
    ``position``. Owner's API token only.

Every data frame is ``server.frames.chat_stream_event(event)`` as JSON,
encoded once per event, websocket header included, and shared as bytes by
every subscriber (``FrameCache``).

Refusals are decided before the upgrade. A plain HTTP request gets the JSON
error; a websocket upgrade is accepted and closed at once with
``4000 + status`` (4401, 4403, 4404, 4429...), because browsers cannot read
a handshake's status. A cursor beyond the head gets a ``resync`` frame and
close 4409: never silently accepted.

Delivery and flow control. A connection catches up on its own subscription
(the hub bounds its buffer and falls back to catch-up reads when it
overflows). Once caught up it joins its key's ``Fanout``: one task per run
or session writing each event to every member's socket, so an event costs
one task wake-up and one ``transport.write`` per subscriber. A member whose
socket buffer passes the high-water mark is handed back to its own path,
which waits for the client to drain; a client that stays blocked longer
than ``ws_send_timeout_s`` is closed with 4408 "too slow" (cut off when
even the close frame cannot be flushed). So one slow client holds at most
the high-water mark plus one frame and never slows anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jwt
from aiohttp import hdrs, web
from multidict import CIMultiDict
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sessionstream.core.errors import (
    Conflict,
    RateLimited,
    SessionStreamError,
    Unauthorized,
    ValidationFailed,
)
from sessionstream.core.vocabulary import TERMINAL, EventType, run_stream, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.hub import LIVE
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.server.auth import bearer_token
from sessionstream.server.fanout import (
    DETACHED,
    GONE,
    JOINED,
    RUN_END,
    Channel,
    Connection,
    Fanout,
    FrameCache,
    RealtimeStats,
    ws_text_frame,
)
from sessionstream.server.frames import dumps, run_id_of, session_id_of
from sessionstream.server.handlers import run_param, uuid_param
from sessionstream.server.keys import AUTH, AUTH_FAILURES, RUN_TOKENS, SESSIONS, SETTINGS, STORE
from sessionstream.server.ratelimit import RateLimiter
from sessionstream.server.sse import serve_sse
from sessionstream.services.accounts import TOKEN_PREFIX, Authenticator, RunTokens
from sessionstream.services.ownership import owned
from sessionstream.services.sessions import Sessions

log = logging.getLogger("sessionstream.realtime")

STATIC_DIR = Path(__file__).resolve().parent / "static"
SUBPROTOCOL = "sessionstream.v1"
BEARER_PREFIX = "bearer."
TOO_SLOW = (4408, "too slow")
#: clients send nothing that matters; keep what they may send small
MAX_CLIENT_MESSAGE = 4096
#: how often a blocked sender looks at its client's backlog (slow clients only)
DRAIN_POLL_S = 0.01

#: every close code a channel uses, documented in the README ("Close codes")
CLOSE_CODES: dict[int, str] = {
    1000: "run finished: the terminal event was sent (run channel)",
    1001: "server shutting down: reconnect and resume",
    1011: "server error: reconnect and resume",
    4400: "bad request (a cursor that is not a non-negative integer, a malformed id)",
    4401: "missing, invalid or expired token",
    4403: "the token is for another run",
    4404: "no such run or session (or another user's)",
    4408: "too slow: the client did not read for ws_send_timeout_s",
    4409: "resync: the cursor is beyond the head (a resync frame precedes it)",
    4429: "too many realtime connections (per user or per process)",
}


# errors ---------------------------------------------------------------------------------------
class Resync(Conflict):
    """A cursor that does not fit the stream; the client must start again from ``head``."""

    code = "resync"

    def __init__(self, message: str, *, head: int) -> None:
        super().__init__(message, details={"head": head})
        self.head = head


class TooManyConnections(RateLimited):
    code = "too_many_connections"


class ShuttingDown(SessionStreamError):
    status = 503
    code = "shutting_down"


class UpgradeRequired(SessionStreamError):
    status = 426
    code = "upgrade_required"


def close_code(exc: SessionStreamError) -> int:
    """The websocket close code that carries an HTTP refusal to a browser."""
    if isinstance(exc, ShuttingDown):
        return 1001
    if 400 <= exc.status < 500:
        return 4000 + exc.status
    return 1011


# pure core ------------------------------------------------------------------------------------
def offered_protocols(headers: Any) -> list[str]:
    raw = headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def credential(
    authorization: str | None, protocols: Sequence[str], query_token: str | None
) -> str | None:
    """The token a client sent: ``Authorization: Bearer``, a subprotocol, or ``?token=``.

    A subprotocol entry is ``bearer.<token>``; a bare token is accepted too,
    since some clients offer the token itself as the protocol.
    """
    token = bearer_token(authorization)
    if token:
        return token
    for proto in protocols:
        if proto.startswith(BEARER_PREFIX) and len(proto) > len(BEARER_PREFIX):
            return proto[len(BEARER_PREFIX) :]
        if proto.startswith(TOKEN_PREFIX) or RunTokens.looks_like_jwt(proto):
            return proto
    return query_token or None


def parse_cursor(raw: str | None, name: str) -> int:
    if raw is None or raw.strip() == "":
        return 0
    value = raw.strip()
    if not value.isdigit():
        raise ValidationFailed(f"{name} must be a non-negative integer, got '{value[:40]}'")
    return int(value)


def compact_frame(events: Sequence[RecordedEvent]) -> dict[str, Any] | None:
    """One ``message.snapshot`` frame folding a run's events so far (terminal ones excluded).

    Its ``seq`` and ``position`` are those of the last folded event, so a
    client resumes from it exactly as from any other frame; the terminal
    event is always sent as its own frame, because the end of a run is an
    event and never inferred.
    """
    folded = [e for e in events if e.type not in TERMINAL]
    if not folded:
        return None
    last = folded[-1]
    data: dict[str, Any] = {
        "text": "",
        "status": "queued",
        "message": None,
        "skeleton": None,
        "draft": None,
        "progress": None,
        "examples": [],
    }
    text: list[str] = []
    for event in folded:
        kind = event.type
        if kind == EventType.MESSAGE_DELTA:
            text.append(str(event.data.get("text", "")))
        elif kind == EventType.RUN_STARTED:
            data["status"] = "running"
        elif kind == EventType.MESSAGE_COMPLETED:
            data["message"] = event.data.get("message")
        elif kind == EventType.SKELETON_UPDATED:
            data["skeleton"] = event.data
        elif kind == EventType.DRAFT_UPDATED:
            data["draft"] = event.data
        elif kind == EventType.EXAMPLES_PROGRESS:
            data["progress"] = event.data
        elif kind == EventType.EXAMPLE_GENERATED:
            data["examples"].append(event.data)
    data["text"] = "".join(text)
    return {
        "type": EventType.MESSAGE_SNAPSHOT,
        "runId": run_id_of(last),
        "sessionId": session_id_of(last),
        "seq": last.version,
        "position": last.position,
        "at": last.recorded_at,
        "data": data,
    }


Resolver = Callable[[web.Request, bool], Awaitable[Channel]]


class Realtime:
    """Authorisation, admission, the send paths and shutdown for both channels."""

    def __init__(
        self,
        store: EventStore,
        tokens: RunTokens,
        service: Sessions,
        auth: Authenticator,
        *,
        auth_failures: RateLimiter | None = None,
        heartbeat_s: float,
        per_user: int,
        per_process: int,
        send_timeout_s: float = 5.0,
        close_timeout_s: float = 2.0,
        sse_ping_s: float = 15.0,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.service = service
        self.auth = auth
        self.auth_failures = auth_failures
        self.heartbeat_s = heartbeat_s
        self.per_user = per_user
        self.per_process = per_process
        self.send_timeout_s = send_timeout_s
        self.close_timeout_s = close_timeout_s
        self.sse_ping_s = sse_ping_s
        self.stats = RealtimeStats()
        self.frames = FrameCache()
        self.closing = False
        self.live: set[Connection] = set()
        self.fanouts: dict[str, Fanout] = {}

    # resolving a request ---------------------------------------------------------------
    def _token(self, request: web.Request) -> str:
        token = credential(
            request.headers.get(hdrs.AUTHORIZATION),
            offered_protocols(request.headers),
            request.query.get("token"),
        )
        if not token:
            raise Unauthorized(
                "send a token: ?token=, a 'bearer.<token>' subprotocol or "
                "'Authorization: Bearer <token>'"
            )
        return token

    @staticmethod
    def _cursor(request: web.Request, sse: bool) -> tuple[int, bool]:
        last_event_id = request.headers.get("Last-Event-ID") if sse else None
        if last_event_id is not None and last_event_id.strip():
            return parse_cursor(last_event_id, "Last-Event-ID"), True
        raw = request.query.get("after")
        return parse_cursor(raw, "after"), raw is not None and raw.strip() not in ("", "0")

    async def resolve_run(self, request: web.Request, sse: bool) -> Channel:
        run_id = run_param(request)
        token = self._token(request)
        expires_at: float | None = None
        if token.startswith(TOKEN_PREFIX):
            user_id = (await self.auth.principal(token)).user_id
        else:
            user_id = self.tokens.verify(token, run_id)
            expires_at = float(jwt.decode(token, options={"verify_signature": False})["exp"])
        doc = await owned(self.store, "run", run_id, user_id)
        after, resumed = self._cursor(request, sse)
        stream = run_stream(run_id)
        head = int(doc.body["seq"])
        if after > head:
            head = await self.store.stream_version(stream)  # the read model may lag a node
            if after > head:
                raise Resync(
                    f"after={after} is beyond the run's last event (seq {head})", head=head
                )
        keys = frozenset({stream})
        if doc.body["status"] not in ("queued", "running") and after >= head:
            return Channel("run", user_id, keys, 0, finished=True, resumed=resumed)
        if after == 0 and request.query.get("compact") in ("1", "true"):
            snapshot = compact_frame(await self.store.read_stream(stream))
            if snapshot is not None:
                self.stats.compact_starts += 1
                position = int(snapshot["position"])
                return Channel(
                    "run",
                    user_id,
                    keys,
                    position,
                    snapshot=dumps(snapshot),
                    snapshot_seq=int(snapshot["seq"]),
                    expires_at=expires_at,
                )
        start = await self.store.position_of(stream, max(after, 1))
        if start is None:
            raise Resync(f"seq {after} is not in the run's log", head=head)
        position = start if after else start - 1
        return Channel("run", user_id, keys, position, expires_at=expires_at, resumed=resumed)

    async def resolve_session(self, request: web.Request, sse: bool) -> Channel:
        session_id = uuid_param(request)
        token = self._token(request)
        if not token.startswith(TOKEN_PREFIX):
            raise Unauthorized("the session channel takes the owner's API token (sst_...)")
        user_id = (await self.auth.principal(token)).user_id
        await self.service.session(user_id, session_id)
        after, resumed = self._cursor(request, sse)
        if after > 0:
            head = await self.store.head_position()
            if after > head:
                raise Resync(f"after={after} is beyond the log's head (position {head})", head=head)
        keys = frozenset({session_stream(session_id)})
        return Channel("session", user_id, keys, after, resumed=resumed)

    # admission ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def admit(self, channel: Channel, transport: str) -> Iterator[None]:
        stats = self.stats
        if self.closing:
            raise ShuttingDown("the server is shutting down; reconnect to another node")
        if stats.connections >= self.per_process:
            raise TooManyConnections(
                f"the server holds its maximum of {self.per_process} realtime connections",
                retry_after=1.0,
            )
        user = channel.user_id
        if stats.by_user.get(user, 0) >= self.per_user:
            raise TooManyConnections(
                f"at most {self.per_user} realtime connections per user", retry_after=1.0
            )
        slot = (channel.kind, transport)
        stats.by_user[user] = stats.by_user.get(user, 0) + 1
        stats.open[slot] = stats.open.get(slot, 0) + 1
        stats.opened[slot] = stats.opened.get(slot, 0) + 1
        stats.resumed += int(channel.resumed)
        try:
            yield
        finally:
            stats.open[slot] -= 1
            left = stats.by_user[user] - 1
            if left:
                stats.by_user[user] = left
            else:
                del stats.by_user[user]

    def refused(self, request: web.Request, exc: SessionStreamError) -> None:
        stats = self.stats
        stats.refused[exc.status] = stats.refused.get(exc.status, 0) + 1
        if isinstance(exc, Resync):
            stats.resyncs += 1
        log.info("realtime refused %s: %s", request.path, exc.message)

    @contextlib.contextmanager
    def connection(self, channel: Channel) -> Iterator[Connection]:
        """The subscription, registered for shutdown and closed on token expiry."""
        conn = Connection(channel, self.store.subscribe(channel.after_position, keys=channel.keys))
        self.live.add(conn)
        timer: asyncio.TimerHandle | None = None
        if channel.expires_at is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, channel.expires_at - time.time())
            timer = loop.call_later(delay, conn.stop, 4401, "the run token has expired")
        try:
            yield conn
        finally:
            if timer is not None:
                timer.cancel()
            conn.subscription.close()
            self.stats.lag_fallbacks += conn.subscription.lag_fallbacks
            self.live.discard(conn)

    async def shutdown(self, _app: web.Application) -> None:
        """Stop every channel with 1001 so shutdown never waits on a subscriber."""
        self.closing = True
        for conn in list(self.live):
            conn.stop(1001, "server shutting down")
        await self.cleanup(_app)

    async def cleanup(self, _app: web.Application) -> None:
        """The fanout tasks are owned here: ended and awaited before the store closes."""
        fanouts = list(self.fanouts.values())
        for fanout in fanouts:
            fanout.close()
        tasks = [fanout.task for fanout in fanouts]
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        for task in tasks:
            task.cancel()

    # websocket ---------------------------------------------------------------------------
    async def websocket(self, request: web.Request, resolve: Resolver) -> web.WebSocketResponse:
        ws: web.WebSocketResponse = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,),
            heartbeat=self.heartbeat_s or None,
            compress=False,  # a deflate context per socket costs ~300 KB and a per-client encode
            max_msg_size=MAX_CLIENT_MESSAGE,
            timeout=self.close_timeout_s,
        )
        with contextlib.ExitStack() as stack:
            try:
                channel = await resolve(request, False)
                stack.enter_context(self.admit(channel, "ws"))
            except SessionStreamError as exc:
                self.refused(request, exc)
                if exc.status == 401 and self.auth_failures is not None:
                    # refused after the upgrade, out of the middleware's sight: a guessed
                    # token spends from its address's bucket here, as over HTTP
                    with contextlib.suppress(RateLimited):
                        self.auth_failures.check(request.remote or "unknown")
                await ws.prepare(_handshake_request(request))
                if isinstance(exc, Resync):
                    resync = {"type": "resync", "reason": exc.message, "head": exc.head}
                    with contextlib.suppress(ConnectionError):
                        await ws.send_str(dumps(resync))
                await self._close(ws, request, close_code(exc), exc.message)
                return ws
            await ws.prepare(_handshake_request(request))
            conn = stack.enter_context(self.connection(channel))
            # The sender is its own task, so waking it per event resumes two frames,
            # not the whole middleware stack; this task only reads (pongs, the close).
            sender = asyncio.create_task(self._sender(ws, request, conn))
            try:
                async for _message in ws:
                    pass  # clients send nothing that matters
            finally:
                conn.stop(GONE, "client gone")  # wake the sender, wherever it waits
                try:
                    await asyncio.wait({sender}, timeout=self.close_timeout_s + 2.0)
                finally:
                    sender.cancel()
        return ws

    async def _sender(
        self, ws: web.WebSocketResponse, request: web.Request, conn: Connection
    ) -> None:
        try:
            end = await self._send_frames(ws, request, conn)
        except ConnectionError:
            return  # the client went away mid-send
        if end is not None and not ws.closed:
            await self._close(ws, request, *end)

    async def _send_frames(
        self, ws: web.WebSocketResponse, request: web.Request, conn: Connection
    ) -> tuple[int, str] | None:
        """Write the channel's frames; the close to send, or None when the client left.

        Frames are shared, pre-encoded bytes written straight to the transport
        (aiohttp's writer would re-encode the same frame for every subscriber).
        The connection catches up on its own subscription, then joins its
        key's ``Fanout`` while it keeps up, and comes back here when it falls
        behind: a write that leaves more than the high-water mark buffered
        waits for the client to drain it, at most ``send_timeout_s`` (4408).
        """
        channel = conn.channel
        if channel.finished:
            return RUN_END
        transport = request.transport
        if transport is None:
            return None
        conn.transport, conn.ws = transport, ws
        conn.high = transport.get_write_buffer_limits()[1]
        if channel.snapshot is not None:
            transport.write(ws_text_frame(channel.snapshot.encode()))
            self.stats.frames_sent += 1
        while True:
            end = await self._send_own(conn, transport)
            if end is not JOINED:
                return end
            assert conn.released is not None
            end = await conn.released
            if end is not DETACHED:
                return end if end is None or end[0] != GONE else None
            if conn.end is not None:
                return conn.end if conn.end[0] != GONE else None
            if not await self._drained(transport):
                return TOO_SLOW
            if conn.end is not None:  # stopped while it drained
                return conn.end if conn.end[0] != GONE else None
            conn.subscription = self.store.subscribe(conn.cursor, keys=channel.keys)

    async def _send_own(
        self, conn: Connection, transport: asyncio.Transport
    ) -> tuple[int, str] | None:
        """Send from the connection's own subscription until it ends or joins the fanout."""
        stats, frames, ws = self.stats, self.frames, conn.ws
        is_run = conn.channel.kind == "run"
        assert ws is not None
        async for event in conn.subscription:
            if ws.closed or transport.is_closing():
                return None  # the client is closing: nothing may follow its close frame
            transport.write(frames.wire(event))
            stats.frames_sent += 1
            conn.cursor = event.position
            if transport.get_write_buffer_size() > conn.high and not await self._drained(transport):
                return TOO_SLOW
            if is_run and event.type in TERMINAL:
                return RUN_END
            if self._join(conn):
                return JOINED
        end = conn.end
        return end if end is None or end[0] != GONE else None

    def _join(self, conn: Connection) -> bool:
        """Hand a caught-up connection to its key's fanout when their cursors meet."""
        subscription = conn.subscription
        if subscription.state != LIVE or subscription.pending_live() or self.closing:
            return False
        key = conn.key
        fanout = self.fanouts.get(key)
        if fanout is None or not fanout.open:
            fanout = self.fanouts[key] = Fanout(
                self.store, self.stats, self.frames, self.fanouts, key, conn.cursor
            )
        elif fanout.cursor != conn.cursor:
            return False  # not at the same event yet; try again after the next one
        subscription.close()
        self.stats.lag_fallbacks += subscription.lag_fallbacks
        fanout.join(conn)
        self.stats.joined += 1
        return True

    async def _drained(self, transport: asyncio.Transport) -> bool:
        """Wait until the client has read the buffer down to the low-water mark."""
        low = transport.get_write_buffer_limits()[0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.send_timeout_s
        while transport.get_write_buffer_size() > low:
            if transport.is_closing():
                return True  # gone: the subscription ends on its own
            if loop.time() >= deadline:
                self.stats.too_slow += 1
                return False
            await asyncio.sleep(DRAIN_POLL_S)
        return True

    async def _close(
        self, ws: web.WebSocketResponse, request: web.Request, code: int, reason: str
    ) -> None:
        """Close with ``code``; a client that cannot take even the close frame is cut off."""
        self.stats.count_close(code)
        message = reason.encode()[:120]
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(self.close_timeout_s + 1.0):
                await ws.close(code=code, message=message)
        transport = request.transport
        if transport is not None and transport.get_write_buffer_size() > 0:
            transport.abort()  # never keep a dead client's backlog in memory

    # handlers ----------------------------------------------------------------------------
    async def run_channel(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(request, self.resolve_run)

    async def session_channel(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(request, self.resolve_session)

    async def _dispatch(self, request: web.Request, resolve: Resolver) -> web.StreamResponse:
        if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
            return await self.websocket(request, resolve)
        sse = "text/event-stream" in request.headers.get(hdrs.ACCEPT, "")
        try:
            channel = await resolve(request, sse)
        except SessionStreamError as exc:
            self.refused(request, exc)
            raise
        if not sse:
            raise UpgradeRequired(
                "open this URL as a websocket, or send 'Accept: text/event-stream' for SSE"
            )
        return await serve_sse(self, request, channel)


def _handshake_request(request: web.Request) -> web.Request:
    """The request as aiohttp should see it: any offered protocols become ``sessionstream.v1``.

    A client that offers protocols gets ``sessionstream.v1`` selected and
    echoed (browsers fail a handshake that echoes none), and the tokens it
    offered never reach aiohttp's protocol negotiation or its log lines.
    """
    if hdrs.SEC_WEBSOCKET_PROTOCOL not in request.headers:
        return request
    headers = CIMultiDict(request.headers)
    headers[hdrs.SEC_WEBSOCKET_PROTOCOL] = SUBPROTOCOL
    return request.clone(headers=headers)


# metrics -----------------------------------------------------------------------------------------
class _RealtimeCollector(Collector):
    def __init__(self, realtime: Realtime) -> None:
        self.realtime = realtime

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.realtime.stats
        open_ = GaugeMetricFamily(
            "sessionstream_realtime_connections",
            "Realtime channels held open",
            labels=["channel", "transport"],
        )
        opened = CounterMetricFamily(
            "sessionstream_realtime_opened",
            "Realtime channels opened",
            labels=["channel", "transport"],
        )
        for (channel, transport), count in sorted(stats.open.items()):
            open_.add_metric([channel, transport], count)
        for (channel, transport), count in sorted(stats.opened.items()):
            opened.add_metric([channel, transport], count)
        yield open_
        yield opened
        yield CounterMetricFamily(
            "sessionstream_realtime_frames", "Frames sent", value=stats.frames_sent
        )
        refused = CounterMetricFamily(
            "sessionstream_realtime_refused", "Channels refused, by HTTP status", labels=["status"]
        )
        for status, count in sorted(stats.refused.items()):
            refused.add_metric([str(status)], count)
        yield refused
        closes = CounterMetricFamily(
            "sessionstream_realtime_closes", "Close codes sent", labels=["code"]
        )
        for code, count in sorted(stats.closes.items()):
            closes.add_metric([str(code)], count)
        yield closes
        yield CounterMetricFamily(
            "sessionstream_realtime_too_slow", "Clients closed with 4408", value=stats.too_slow
        )


async def _register_metrics(app: web.Application) -> None:
    try:
        from sessionstream.server.metrics import REGISTRY
    except ModuleNotFoundError:  # metrics are optional
        return
    if REGISTRY in app:
        app[REGISTRY].register(_RealtimeCollector(app[REALTIME]))


REALTIME = web.AppKey("realtime", Realtime)
REALTIME_STATS = web.AppKey("realtime_stats", RealtimeStats)


def install(app: web.Application) -> None:
    settings = app[SETTINGS]
    realtime = Realtime(
        app[STORE],
        app[RUN_TOKENS],
        app[SESSIONS],
        app[AUTH],
        auth_failures=app[AUTH_FAILURES],
        heartbeat_s=settings.ws_heartbeat_s,
        per_user=settings.max_connections_per_user,
        per_process=settings.max_connections,
        send_timeout_s=settings.ws_send_timeout_s,
        close_timeout_s=settings.ws_close_timeout_s,
        sse_ping_s=settings.sse_ping_s,
    )
    app[REALTIME] = realtime
    app[REALTIME_STATS] = realtime.stats
    app.router.add_get("/api/realtime/runs/{run_id}", realtime.run_channel, allow_head=False)
    app.router.add_get("/api/realtime/sessions/{id}", realtime.session_channel, allow_head=False)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    app.on_shutdown.append(realtime.shutdown)
    app.on_cleanup.append(realtime.cleanup)
    app.on_startup.append(_register_metrics)
