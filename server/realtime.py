"""The realtime core, and the channels ``/api/realtime/...`` serves on it.

Every realtime wire sits on the one ``Realtime`` of an app: its ``gate``
authorises a channel (``server/access.py``), its ``admission`` holds one count
of open connections against the per-user and per-process limits
(``server/admission.py``), its ``tails`` turn a cursor into a tail of the log
and stop them all at shutdown (``server/tail.py``), and its ``frames`` encode
each event once for every subscriber, its ``heartbeats`` tell every channel
how far this node has delivered (``server/heartbeat.py``); the app's ``Revocations``
(``server/revocation.py``) stop the channels whose API token has been
revoked. The wires are thin encoders on it: websockets
(``server/websocket.py``), server-sent events (``server/sse.py``) and the
Trigger.dev feeds (``server/trigger.py``).

``GET /api/realtime/runs/{runId}``
    Every event of one run, resumable by the run's ``seq`` (``after=``), with
    an optional compact start (``compact=1``: one ``message.snapshot`` frame
    with the text so far, then only newer events). Authenticated by the run's
    ``publicAccessToken`` or the owner's API token. Ends after the terminal
    event.
``GET /api/realtime/sessions/{id}``
    Every event of a session and of its runs (keys ``session-<id>``: the
    session stream plus every event correlated with it), resumable by global
    ``position``. Owner's API token only.

A websocket upgrade gets the websocket; ``Accept: text/event-stream`` gets the
same channel as server-sent events; anything else, once authorised, 426.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import hdrs, web

from sessionstream.core.errors import SessionStreamError
from sessionstream.eventstore.base import EventStore
from sessionstream.server import sse, websocket
from sessionstream.server.access import Gate
from sessionstream.server.admission import Admission
from sessionstream.server.auth import channel_credential
from sessionstream.server.cursor import AFTER, LAST_EVENT_ID, Cursor, channel_cursor
from sessionstream.server.fanout import Fanout
from sessionstream.server.frames import FrameCache
from sessionstream.server.handlers import run_param, uuid_param
from sessionstream.server.heartbeat import Heartbeats
from sessionstream.server.keys import AUTH, AUTH_FAILURES, RUN_TOKENS, SETTINGS, STORE
from sessionstream.server.metrics import REGISTRY
from sessionstream.server.ratelimit import RateLimiter
from sessionstream.server.realtime_stats import RealtimeCollector, RealtimeStats
from sessionstream.server.revocation import Revocations
from sessionstream.server.tail import (
    Channel,
    Connection,
    Resync,
    Tails,
    run_channel,
    session_channel,
)

log = logging.getLogger("sessionstream.realtime")

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: how to send a token on a channel, said to a client that sent none
TOKEN_HINT = (
    "send a token: ?token=, a 'bearer.<token>' subprotocol or 'Authorization: Bearer <token>'"
)


class UpgradeRequired(SessionStreamError):
    status = 426
    code = "upgrade_required"


Resolver = Callable[[web.Request, bool], Awaitable[Channel]]


class Realtime:
    """Authorisation, admission, tails, frames and shutdown for every realtime wire."""

    def __init__(
        self,
        store: EventStore,
        gate: Gate,
        *,
        auth_failures: RateLimiter | None = None,
        heartbeat_s: float,
        per_user: int,
        per_process: int,
        send_timeout_s: float = 5.0,
        close_timeout_s: float = 2.0,
        sse_ping_s: float = 15.0,
        heartbeat_interval_s: float = 10.0,
    ) -> None:
        self.store = store
        self.supervisor = store.supervisor
        self.gate = gate
        self.auth_failures = auth_failures
        self.heartbeat_s = heartbeat_s
        self.send_timeout_s = send_timeout_s
        self.close_timeout_s = close_timeout_s
        self.sse_ping_s = sse_ping_s
        self.stats = RealtimeStats()
        self.admission = Admission(self.stats, per_user=per_user, per_process=per_process)
        self.tails = Tails(store, self.stats)
        self.heartbeats = Heartbeats(store, self.tails, interval_s=heartbeat_interval_s)
        self.frames = FrameCache()
        self.fanouts: dict[str, Fanout] = {}

    @property
    def closing(self) -> bool:
        return self.admission.closing

    @property
    def live(self) -> set[Connection]:
        return self.tails.live

    def refused(self, request: web.Request, exc: SessionStreamError) -> None:
        stats = self.stats
        stats.refused[exc.status] = stats.refused.get(exc.status, 0) + 1
        if isinstance(exc, Resync):
            stats.resyncs += 1
        log.info("realtime refused %s: %s", request.path, exc.message)

    async def shutdown(self, app: web.Application) -> None:
        """Refuse new connections and stop every open one, so shutdown waits on none.

        Websockets close with 1001, SSE channels end, Trigger.dev streams are
        dropped (their SDK reconnects elsewhere) and long-polls answer at once.
        """
        self.admission.closing = True
        self.tails.stop_all(1001, "server shutting down")
        await self.cleanup(app)

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

    # the /api/realtime channels ------------------------------------------------------------
    @staticmethod
    def _cursor(request: web.Request, sse: bool) -> Cursor:
        last_event_id = request.headers.get(LAST_EVENT_ID) if sse else None
        return channel_cursor(request.query.get(AFTER), last_event_id)

    async def resolve_run(self, request: web.Request, sse: bool) -> Channel:
        run_id = run_param(request)
        access = await self.gate.run(channel_credential(request), run_id, hint=TOKEN_HINT)
        cursor = self._cursor(request, sse)
        compact = request.query.get("compact") in ("1", "true")
        channel = await run_channel(
            self.store,
            access,
            cursor.value,
            cursor=cursor.name,
            resumed=cursor.resumed,
            compact=compact,
        )
        self.stats.compact_starts += int(channel.snapshot is not None)
        return channel

    async def resolve_session(self, request: web.Request, sse: bool) -> Channel:
        session_id = uuid_param(request)
        access = await self.gate.session(channel_credential(request), session_id, hint=TOKEN_HINT)
        cursor = self._cursor(request, sse)
        return await session_channel(
            self.store, access, cursor.value, cursor=cursor.name, resumed=cursor.resumed
        )

    async def run_channel(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(request, self.resolve_run)

    async def session_channel(self, request: web.Request) -> web.StreamResponse:
        return await self._dispatch(request, self.resolve_session)

    async def _dispatch(self, request: web.Request, resolve: Resolver) -> web.StreamResponse:
        if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
            return await websocket.serve(self, request, resolve)
        wants_sse = "text/event-stream" in request.headers.get(hdrs.ACCEPT, "")
        try:
            channel = await resolve(request, wants_sse)
        except SessionStreamError as exc:
            self.refused(request, exc)
            raise
        if not wants_sse:
            raise UpgradeRequired(
                "open this URL as a websocket, or send 'Accept: text/event-stream' for SSE"
            )
        return await sse.serve(self, request, channel)


REALTIME = web.AppKey("realtime", Realtime)
REALTIME_STATS = web.AppKey("realtime_stats", RealtimeStats)
REVOCATIONS = web.AppKey("revocations", Revocations)


async def _register_metrics(app: web.Application) -> None:
    app[REGISTRY].register(RealtimeCollector(app[REALTIME_STATS]))


def install(app: web.Application) -> None:
    settings = app[SETTINGS]
    realtime = Realtime(
        app[STORE],
        Gate(app[STORE], app[AUTH], app[RUN_TOKENS]),
        auth_failures=app[AUTH_FAILURES],
        heartbeat_s=settings.ws_heartbeat_s,
        per_user=settings.max_connections_per_user,
        per_process=settings.max_connections,
        send_timeout_s=settings.ws_send_timeout_s,
        close_timeout_s=settings.ws_close_timeout_s,
        sse_ping_s=settings.sse_ping_s,
        heartbeat_interval_s=settings.delivery_heartbeat_s,
    )
    app[REALTIME] = realtime
    app[REALTIME_STATS] = realtime.stats
    revocations = Revocations(realtime.tails, app[AUTH], interval_s=settings.token_cache_s)
    app[REVOCATIONS] = revocations
    app.cleanup_ctx.append(revocations.ctx)
    app.cleanup_ctx.append(realtime.heartbeats.ctx)
    app.router.add_get("/api/realtime/runs/{run_id}", realtime.run_channel, allow_head=False)
    app.router.add_get("/api/realtime/sessions/{id}", realtime.session_channel, allow_head=False)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    app.on_shutdown.append(realtime.shutdown)
    app.on_cleanup.append(realtime.cleanup)
    app.on_startup.append(_register_metrics)
