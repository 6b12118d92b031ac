"""Trigger.dev realtime wire protocol, so browser code written for that SDK works unchanged.

A page that used ``useRealtimeRunWithStreams`` (``@trigger.dev/react-hooks``)
or ``runs.subscribeToRun(id).withStreams()`` (``@trigger.dev/sdk``) points the
SDK's ``baseURL`` here and keeps its code. Two endpoints make that work:

``GET /realtime/v1/runs/{runId}``
    The run as one row of an Electric "shape" (the protocol of
    ``@electric-sql/client``, which the SDK drives): a snapshot, then
    long-polls (``live=true``) that return as soon as the row changes. The
    row is built from the run read model by the pure ``run_row``; it only
    changes on ``ROW_EVENTS`` (a text delta is a stream chunk, not a row
    change), so a subscriber makes a handful of requests per run, not one
    per delta.
``GET /realtime/v1/streams/{runId}/{key}``
    Server-sent events (the SDK's "v1" format) of every event on the run's
    stream, each ``id: <seq>`` + ``data: <ChatStreamEvent>``: full replay from
    the log for late subscribers, ``Last-Event-ID`` resumes exactly after a
    seq. The body ends cleanly only after the run's terminal event, because
    the SDK treats a clean end as "stream complete"; every other way out
    (``Timeout-Seconds``, token expiry, shutdown) drops the connection, which
    the SDK answers by reconnecting with ``Last-Event-ID``.

Both authenticate with the run's ``publicAccessToken`` (or the owner's API
token) on every request: 401 for a missing, invalid or expired token, 403
for another run's, 404 for a run that does not exist or is not the caller's.
A refused token is logged and counted, because the SDK itself reports it to
nobody (it just keeps waiting).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sessionstream.core.errors import (
    Forbidden,
    RateLimited,
    Unauthorized,
    ValidationFailed,
)
from sessionstream.core.vocabulary import TERMINAL
from sessionstream.core.vocabulary import run_stream as run_stream_id
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.hub import Subscription
from sessionstream.eventstore.model import Doc
from sessionstream.server.auth import bearer_token
from sessionstream.server.keys import AUTH, RUN_TOKENS, SETTINGS, STORE
from sessionstream.server.trigger_shape import (
    JSON_TYPE,
    RESERVED,
    ROW_EVENTS,
    SCHEMA_HEADER,
    offset_seq,
    parse_last_event_id,
    parse_timeout_seconds,
    row_offset,
    run_row,
    shape_body,
    sse_frame,
)
from sessionstream.services.accounts import Authenticator, RunTokens
from sessionstream.services.ownership import owned

log = logging.getLogger("sessionstream.trigger")

PREFIX = "/realtime/v1/"


@dataclass(slots=True)
class TriggerStats:
    """Counters for operators and tests: what the SDK never tells anyone."""

    snapshots: int = 0
    polls_changed: int = 0
    polls_idle: int = 0
    streams_opened: int = 0
    streams_resumed: int = 0
    streams_completed: int = 0
    streams_dropped: int = 0
    frames_sent: int = 0
    refused: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Access:
    doc: Doc
    user_id: str
    expires_at: float | None  # epoch seconds; None for an API token


class TriggerFeeds:
    """Authorisation, connection accounting and shutdown for both endpoints."""

    def __init__(
        self,
        store: EventStore,
        tokens: RunTokens,
        auth: Authenticator,
        *,
        poll_s: float,
        ping_s: float,
        per_user: int,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.auth = auth
        self.poll_s = poll_s
        self.ping_s = ping_s
        self.per_user = per_user
        self.stats = TriggerStats()
        self.closing = False
        self._open: dict[str, int] = {}
        self._subscriptions: set[Subscription] = set()

    @property
    def connections(self) -> int:
        return sum(self._open.values())

    async def authorize(self, request: web.Request, run_id: str) -> Access:
        token = bearer_token(request.headers.get("Authorization"))
        expires_at: float | None = None
        try:
            if not token:
                raise Unauthorized("send 'Authorization: Bearer <publicAccessToken>'")
            if RunTokens.looks_like_jwt(token):
                user_id = self.tokens.verify(token, run_id)
                claims = jwt.decode(token, options={"verify_signature": False})
                expires_at = float(claims["exp"])
            else:
                user_id = (await self.auth.principal(token)).user_id
        except (Unauthorized, Forbidden) as exc:
            self.stats.refused[exc.status] = self.stats.refused.get(exc.status, 0) + 1
            log.warning("refused %s %s: %s", request.method, request.path, exc.message)
            raise
        doc = await owned(self.store, "run", run_id, user_id)
        return Access(doc, user_id, expires_at)

    @asynccontextmanager
    async def connection(self, user_id: str) -> AsyncIterator[None]:
        if self._open.get(user_id, 0) >= self.per_user:
            raise RateLimited(
                f"at most {self.per_user} realtime connections per user", retry_after=1.0
            )
        self._open[user_id] = self._open.get(user_id, 0) + 1
        try:
            yield
        finally:
            left = self._open[user_id] - 1
            if left:
                self._open[user_id] = left
            else:
                del self._open[user_id]

    async def tail(self, run_id: str, after_seq: int) -> Subscription:
        """Events of the run after ``after_seq``: catch up from the log, then live."""
        stream = run_stream_id(run_id)
        if after_seq > 0:
            start = await self.store.position_of(stream, after_seq)
        else:
            first = await self.store.position_of(stream, 1)
            start = None if first is None else first - 1
        subscription = self.store.subscribe(start or 0, keys=frozenset({stream}))
        if self.closing:
            subscription.close()  # shutting down: answer at once, the client retries elsewhere
        else:
            self._subscriptions.add(subscription)
        return subscription

    def untail(self, subscription: Subscription) -> None:
        subscription.close()
        self._subscriptions.discard(subscription)

    async def shutdown(self, _app: web.Application) -> None:
        """Wake every held request so shutdown never waits out a long-poll or a stream."""
        self.closing = True
        for subscription in list(self._subscriptions):
            subscription.close()


TRIGGER = web.AppKey("trigger_feeds", TriggerFeeds)


async def _payload(store: EventStore, run_id: str) -> Any:
    first = await store.read_stream(run_stream_id(run_id), 0, limit=1)
    return first[0].data.get("input") if first else None


def _skip(request: web.Request) -> frozenset[str]:
    raw = request.query.get("skipColumns", "")
    return frozenset(c for c in raw.split(",") if c and c not in RESERVED)


async def _row_of(store: EventStore, doc: Doc, skip: frozenset[str]) -> dict[str, str | None]:
    row = run_row(doc.body, await _payload(store, doc.key))
    return {k: v for k, v in row.items() if k not in skip}


def _shape_response(body: str, offset: str, handle: str, *, live: bool) -> web.Response:
    headers = {
        "Cache-Control": "no-store",
        "electric-offset": offset,
        "electric-handle": handle,
        "electric-up-to-date": "",
        "electric-cursor": str(int(time.time())),
    }
    if not live:
        headers["electric-schema"] = SCHEMA_HEADER
    return web.Response(text=body, content_type=JSON_TYPE, headers=headers)


async def run_feed(request: web.Request) -> web.Response:
    """The Electric shape of one run: snapshot, or a long-poll for its next change."""
    feeds = request.app[TRIGGER]
    run_id = request.match_info["run_id"]
    access = await feeds.authorize(request, run_id)
    query = request.query
    handle = run_stream_id(run_id)
    offset = query.get("offset", "-1")
    skip = _skip(request)
    live = query.get("live") == "true"
    if offset == "-1" or query.get("handle") != handle or not live:
        # first request, a handle from elsewhere, or a catch-up: the whole row again
        feeds.stats.snapshots += 1
        row = await _row_of(feeds.store, access.doc, skip)
        return _shape_response(
            shape_body(run_id, row, "insert"), row_offset(access.doc.body), handle, live=False
        )
    seen = offset_seq(offset)
    doc: Doc | None = access.doc
    changed = int(access.doc.body["seq"]) < seen  # an offset from the future: resync
    if not changed:
        async with feeds.connection(access.user_id):
            changed = await _wait_for_change(feeds, run_id, seen)
        if changed:
            doc = await feeds.store.get_doc("run", run_id)
    if not changed or doc is None:
        feeds.stats.polls_idle += 1
        return _shape_response(shape_body(run_id, None, "update"), offset, handle, live=True)
    feeds.stats.polls_changed += 1
    row = await _row_of(feeds.store, doc, skip)
    return _shape_response(
        shape_body(run_id, row, "update"), row_offset(doc.body), handle, live=True
    )


async def _wait_for_change(feeds: TriggerFeeds, run_id: str, seen: int) -> bool:
    """True as soon as an event after ``seen`` changes the row; False after the poll window."""
    window = feeds.poll_s * random.uniform(0.85, 1.15)  # spread many clients' re-polls
    subscription = await feeds.tail(run_id, seen)
    try:
        async with asyncio.timeout(window):
            async for event in subscription:
                if event.version > seen and event.type in ROW_EVENTS:
                    return True
    except TimeoutError:
        return False
    finally:
        feeds.untail(subscription)
    return False  # closed by shutdown


async def run_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events of a run's ``ChatStreamEvent``s, resumable by seq."""
    feeds = request.app[TRIGGER]
    run_id = request.match_info["run_id"]
    access = await feeds.authorize(request, run_id)
    run = access.doc.body
    head = int(run["seq"])
    after = parse_last_event_id(request.headers.get("Last-Event-ID"))
    resumed = after is not None
    if after is None:
        latest = request.headers.get("X-Trigger-Stream-Start") == "latest"
        after = head if latest else 0
    if after > head:
        raise ValidationFailed(
            f"Last-Event-ID {after} is beyond the run's last event ({head}); "
            "subscribe again without it"
        )
    limit = parse_timeout_seconds(request.headers.get("Timeout-Seconds"))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (limit if limit is not None else float("inf"))
    if access.expires_at is not None:  # never serve past the token's lifetime
        deadline = min(deadline, loop.time() + access.expires_at - time.time())
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
            "X-Stream-Version": "v1",
        }
    )
    async with feeds.connection(access.user_id):
        feeds.stats.streams_opened += 1
        feeds.stats.streams_resumed += int(resumed)
        await response.prepare(request)
        if run["status"] not in ("queued", "running") and after >= head:
            feeds.stats.streams_completed += 1
            return response  # the client already has the terminal event
        subscription = await feeds.tail(run_id, after)
        try:
            if await _pump(feeds, subscription, response, deadline):
                feeds.stats.streams_completed += 1
            else:
                feeds.stats.streams_dropped += 1
                _drop(request)
        except ConnectionResetError:
            pass  # the client went away; it resumes with Last-Event-ID if it wants more
        finally:
            feeds.untail(subscription)
    return response


async def _pump(
    feeds: TriggerFeeds, subscription: Subscription, response: web.StreamResponse, deadline: float
) -> bool:
    """Send events until the terminal one (True) or until the deadline or shutdown (False)."""
    loop = asyncio.get_running_loop()
    while True:
        wait = min(feeds.ping_s, deadline - loop.time())
        if wait <= 0:
            return False
        try:
            async with asyncio.timeout(wait):
                event = await anext(subscription)
        except TimeoutError:
            if deadline - loop.time() > 0:
                await response.write(b": ping\n\n")
            continue
        except StopAsyncIteration:
            return False
        await response.write(sse_frame(event))
        feeds.stats.frames_sent += 1
        if event.type in TERMINAL:
            return True


def _drop(request: web.Request) -> None:
    """End the body without its final chunk: the SDK reconnects instead of finishing."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def preflight(request: web.Request) -> web.Response:
    headers = {
        "Access-Control-Allow-Methods": "GET, OPTIONS",
        "Access-Control-Max-Age": "600",
        "Vary": "Access-Control-Request-Headers",
    }
    wanted = request.headers.get("Access-Control-Request-Headers")
    if wanted:
        # "*" would not cover Authorization, so name exactly what the browser asked for
        headers["Access-Control-Allow-Headers"] = wanted
    return web.Response(status=204, headers=headers)


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer under the prefix, errors included, is readable cross-origin."""
    if request.path.startswith(PREFIX):
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = "*"


class _FeedCollector(Collector):
    def __init__(self, feeds: TriggerFeeds) -> None:
        self.feeds = feeds

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.feeds.stats
        yield GaugeMetricFamily(
            "sessionstream_trigger_connections",
            "Trigger.dev-protocol long-polls and streams held open",
            value=self.feeds.connections,
        )
        yield CounterMetricFamily(
            "sessionstream_trigger_frames", "SSE frames sent", value=stats.frames_sent
        )
        streams = CounterMetricFamily(
            "sessionstream_trigger_streams", "SSE streams by outcome", labels=["outcome"]
        )
        streams.add_metric(["completed"], stats.streams_completed)
        streams.add_metric(["dropped"], stats.streams_dropped)
        yield streams
        refused = CounterMetricFamily(
            "sessionstream_trigger_refused", "Requests refused for their token", labels=["status"]
        )
        for status, count in sorted(stats.refused.items()):
            refused.add_metric([str(status)], count)
        yield refused


async def _register_metrics(app: web.Application) -> None:
    try:
        from sessionstream.server.metrics import REGISTRY
    except ModuleNotFoundError:  # metrics are optional
        return
    if REGISTRY in app:
        app[REGISTRY].register(_FeedCollector(app[TRIGGER]))


def install(app: web.Application) -> None:
    settings = app[SETTINGS]
    feeds = TriggerFeeds(
        app[STORE],
        app[RUN_TOKENS],
        app[AUTH],
        poll_s=settings.trigger_poll_s,
        ping_s=settings.trigger_ping_s,
        per_user=settings.max_connections_per_user,
    )
    app[TRIGGER] = feeds
    runs = app.router.add_resource(PREFIX + "runs/{run_id}")
    runs.add_route("GET", run_feed)
    runs.add_route("OPTIONS", preflight)
    streams = app.router.add_resource(PREFIX + "streams/{run_id}/{key}")
    streams.add_route("GET", run_stream)
    streams.add_route("OPTIONS", preflight)
    app.on_response_prepare.append(_cors)
    app.on_shutdown.append(feeds.shutdown)
    app.on_startup.append(_register_metrics)
