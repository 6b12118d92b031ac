"""Server-sent events for the realtime channels (``Accept: text/event-stream``).

The same channel as the websocket, for clients that only speak HTTP: each
event is ``id: <cursor>`` (the run's ``seq`` on a run channel, the global
``position`` on a session channel), ``event: <type>`` and ``data:`` the
``ChatStreamEvent`` JSON, so ``EventSource`` resumes by itself with
``Last-Event-ID``. ``: ping`` comments keep idle proxies from timing out.

A run's stream ends after its terminal event. ``EventSource`` reconnects
after any end, so a request whose cursor is already at a finished run's
terminal event gets ``204 No Content``, which tells it to stop. A client
that does not read is cut off (there is no close code in HTTP) after
``ws_send_timeout_s``; it resumes from its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from aiohttp import web

from sessionstream.core.vocabulary import TERMINAL, EventType
from sessionstream.server.fanout import Channel, Connection

if TYPE_CHECKING:
    from sessionstream.server.realtime import Realtime

PING = b": ping\n\n"
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}


def sse_frame(cursor: int, event_type: str, data: str) -> bytes:
    """One event; ``data`` is single-line JSON, so one ``data:`` line carries it."""
    return f"id: {cursor}\nevent: {event_type}\ndata: {data}\n\n".encode()


async def serve_sse(
    realtime: Realtime, request: web.Request, channel: Channel
) -> web.StreamResponse:
    if channel.finished:
        return web.Response(status=204, headers={"Cache-Control": "no-store"})
    response = web.StreamResponse(headers=HEADERS)
    with realtime.admit(channel, "sse"), realtime.connection(channel) as conn:
        await response.prepare(request)
        try:
            if not await _pump(realtime, request, response, conn):
                transport = request.transport
                if transport is not None:
                    transport.abort()  # too slow: drop it and its backlog
                return response
        except ConnectionError:
            return response  # the client went away; it resumes with Last-Event-ID
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    return response


async def _pump(
    realtime: Realtime, request: web.Request, response: web.StreamResponse, conn: Connection
) -> bool:
    """Send until the terminal event or until stopped; False when the client is too slow."""
    channel = conn.channel
    by_seq = channel.kind == "run"
    stats, frames = realtime.stats, realtime.frames
    if channel.snapshot is not None:
        frame = sse_frame(channel.snapshot_seq, EventType.MESSAGE_SNAPSHOT, channel.snapshot)
        if not await _write(realtime, response, frame):
            return False
        stats.frames_sent += 1
    subscription = conn.subscription
    while True:
        try:
            async with asyncio.timeout(realtime.sse_ping_s):
                event = await anext(subscription)
        except TimeoutError:
            if not await _write(realtime, response, PING):
                return False
            continue
        except StopAsyncIteration:
            return True  # stopped: shutdown, token expiry or the client left
        cursor = event.version if by_seq else event.position
        if not await _write(realtime, response, sse_frame(cursor, event.type, frames.text(event))):
            return False
        stats.frames_sent += 1
        if by_seq and event.type in TERMINAL:
            return True


async def _write(realtime: Realtime, response: web.StreamResponse, data: bytes) -> bool:
    try:
        async with asyncio.timeout(realtime.send_timeout_s):
            await response.write(data)
    except TimeoutError:
        realtime.stats.too_slow += 1
        return False
    return True
