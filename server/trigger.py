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

Both are thin wires on the realtime core (``server/realtime.py``): the same
authorisation as the websocket channels (the run's ``publicAccessToken`` or
the owner's API token, on every request: 401 for a missing, invalid or
expired token, 403 for another run's, 404 for a run that does not exist or
is not the caller's), the same connection count and limits (a held long-poll
or stream is one realtime connection), the same cursor rule, tail and SSE
pump. A refused token is logged and counted here, because the SDK itself
reports it to nobody (it just keeps waiting).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from aiohttp import web

from sessionstream.core.errors import Forbidden, Unauthorized, ValidationFailed
from sessionstream.core.vocabulary import run_stream as run_stream_id
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import Doc, RecordedEvent
from sessionstream.server.access import Access
from sessionstream.server.auth import channel_credential
from sessionstream.server.cursor import FIRST_OFFSET, LAST_EVENT_ID, offset_seq, parse_cursor
from sessionstream.server.keys import SETTINGS
from sessionstream.server.metrics import REGISTRY
from sessionstream.server.pump import Outcome, pump
from sessionstream.server.realtime import REALTIME, Realtime
from sessionstream.server.realtime_stats import (
    TRIGGER_POLL,
    TRIGGER_SSE,
    TriggerCollector,
    TriggerStats,
)
from sessionstream.server.tail import Channel, Resync, run_channel, run_start
from sessionstream.server.trigger_shape import (
    JSON_TYPE,
    RESERVED,
    ROW_EVENTS,
    SCHEMA_HEADER,
    parse_timeout_seconds,
    row_offset,
    run_row,
    shape_body,
    stream_frame,
)

log = logging.getLogger("sessionstream.trigger")

PREFIX = "/realtime/v1/"
TOKEN_HINT = "send 'Authorization: Bearer <publicAccessToken>'"
STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
    "X-Stream-Version": "v1",
}


class TriggerFeeds:
    """The Trigger.dev wires' settings and counters, on the app's realtime core."""

    def __init__(self, core: Realtime, *, poll_s: float, ping_s: float) -> None:
        self.core = core
        self.poll_s = poll_s
        self.ping_s = ping_s
        self.stats = TriggerStats()

    async def authorize(self, request: web.Request, run_id: str) -> Access:
        try:
            return await self.core.gate.run(channel_credential(request), run_id, hint=TOKEN_HINT)
        except (Unauthorized, Forbidden) as exc:
            self.stats.refused[exc.status] = self.stats.refused.get(exc.status, 0) + 1
            log.warning("refused %s %s: %s", request.method, request.path, exc.message)
            raise


TRIGGER = web.AppKey("trigger_feeds", TriggerFeeds)


async def _payload(store: EventStore, run_id: str) -> object:
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
    store = feeds.core.store
    run_id = request.match_info["run_id"]
    access = await feeds.authorize(request, run_id)
    query = request.query
    handle = run_stream_id(run_id)
    offset = query.get("offset", FIRST_OFFSET)
    skip = _skip(request)
    live = query.get("live") == "true"
    if offset == FIRST_OFFSET or query.get("handle") != handle or not live:
        # first request, a handle from elsewhere, or a catch-up: the whole row again
        feeds.stats.snapshots += 1
        row = await _row_of(store, access.doc, skip)
        return _shape_response(
            shape_body(run_id, row, "insert"), row_offset(access.doc.body), handle, live=False
        )
    seen = offset_seq(offset)
    doc: Doc | None = access.doc
    changed = int(access.doc.body["seq"]) < seen  # an offset from the future: resync
    if not changed:
        changed = await _wait_for_change(feeds, access, seen)
        if changed:
            doc = await store.get_doc("run", run_id)
    if not changed or doc is None:
        feeds.stats.polls_idle += 1
        return _shape_response(shape_body(run_id, None, "update"), offset, handle, live=True)
    feeds.stats.polls_changed += 1
    row = await _row_of(store, doc, skip)
    return _shape_response(
        shape_body(run_id, row, "update"), row_offset(doc.body), handle, live=True
    )


async def _wait_for_change(feeds: TriggerFeeds, access: Access, seen: int) -> bool:
    """True as soon as an event after ``seen`` changes the row; False after the poll window.

    The held request is a realtime connection like any other: admitted
    against the limits, and answered at once (False) when the core stops it.
    """
    core = feeds.core
    window = feeds.poll_s * random.uniform(0.85, 1.15)  # spread many clients' re-polls
    stream = run_stream_id(access.doc.key)
    start = await run_start(core.store, stream, seen, head=int(access.doc.body["seq"]))
    # A poll admitted with a valid token runs its window out: ending it at the token's
    # expiry would make the SDK's next poll a 401 that its shape feed never refreshes
    # from, while its stream feed does. The window is short and the answer is one row.
    # Revocation still ends it (token_ref).
    channel = Channel("run", access.user_id, frozenset({stream}), start, token_ref=access.token_ref)
    with (
        core.admission.admit(access.user_id, "run", TRIGGER_POLL),
        core.tails.open(channel) as conn,
    ):
        try:
            async with asyncio.timeout(window):
                async for event in conn.subscription:
                    if event.version > seen and event.type in ROW_EVENTS:
                        return True
        except TimeoutError:
            return False
    return False  # stopped: shutdown or revocation


async def run_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events of a run's ``ChatStreamEvent``s, resumable by seq."""
    feeds = request.app[TRIGGER]
    core = feeds.core
    run_id = request.match_info["run_id"]
    access = await feeds.authorize(request, run_id)
    after = parse_cursor(request.headers.get(LAST_EVENT_ID), LAST_EVENT_ID)
    resumed = after is not None
    if after is None:
        latest = request.headers.get("X-Trigger-Stream-Start") == "latest"
        after = int(access.doc.body["seq"]) if latest else 0
    try:
        channel = await run_channel(
            core.store, access, after, cursor=LAST_EVENT_ID, resumed=resumed
        )
    except Resync as exc:
        # 400, not 409: the SDK ends on a 400 but would retry a 409 forever
        raise ValidationFailed(f"{exc.message}; subscribe again without it") from exc
    limit = parse_timeout_seconds(request.headers.get("Timeout-Seconds"))
    deadline = None if limit is None else asyncio.get_running_loop().time() + limit
    frames = core.frames

    def encode(event: RecordedEvent) -> bytes:
        return stream_frame(event.version, frames.text(event))

    response = web.StreamResponse(headers=STREAM_HEADERS)
    with core.admission.admit(access.user_id, "run", TRIGGER_SSE, resumed=resumed):
        feeds.stats.streams_opened += 1
        feeds.stats.streams_resumed += int(resumed)
        await response.prepare(request)
        if channel.finished:
            feeds.stats.streams_completed += 1
            return response  # the client already has the terminal event
        with core.tails.open(channel) as conn:
            try:
                outcome = await pump(
                    conn,
                    response,
                    encode,
                    feeds.stats,
                    ping_s=feeds.ping_s,
                    ping=core.heartbeats.comment,
                    send_timeout_s=core.send_timeout_s,
                    transport=request.transport,
                    deadline=deadline,
                )
            except ConnectionError:
                return response  # the client went away; it resumes with Last-Event-ID
        if outcome is Outcome.FINISHED:
            feeds.stats.streams_completed += 1
        else:
            feeds.stats.streams_dropped += 1
            _drop(request, flush=outcome is not Outcome.TOO_SLOW)
    return response


def _drop(request: web.Request, *, flush: bool) -> None:
    """End the body without its final chunk: the SDK reconnects instead of finishing.

    What is buffered still goes out first, unless the client stopped reading:
    then the backlog is thrown away with the connection.
    """
    transport = request.transport
    if transport is None:
        return
    if flush:
        transport.close()
    else:
        transport.abort()


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


async def _register_metrics(app: web.Application) -> None:
    feeds = app[TRIGGER]
    app[REGISTRY].register(TriggerCollector(feeds.stats, feeds.core.stats))


def install(app: web.Application) -> None:
    """The Trigger.dev endpoints, on the realtime core ``server.realtime`` installed."""
    settings = app[SETTINGS]
    feeds = TriggerFeeds(
        app[REALTIME], poll_s=settings.trigger_poll_s, ping_s=settings.trigger_ping_s
    )
    app[TRIGGER] = feeds
    runs = app.router.add_resource(PREFIX + "runs/{run_id}")
    runs.add_route("GET", run_feed)
    runs.add_route("OPTIONS", preflight)
    streams = app.router.add_resource(PREFIX + "streams/{run_id}/{key}")
    streams.add_route("GET", run_stream)
    streams.add_route("OPTIONS", preflight)
    app.on_response_prepare.append(_cors)
    app.on_startup.append(_register_metrics)
