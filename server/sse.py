"""Server-sent events for the realtime channels (``Accept: text/event-stream``).

The same channel as the websocket, for clients that only speak HTTP: each
event is ``id: <cursor>`` (the run's ``seq`` on a run channel, the global
``position`` on a session channel), ``event: <type>`` and ``data:`` the
``ChatStreamEvent`` JSON, so ``EventSource`` resumes by itself with
``Last-Event-ID``. After ``sse_ping_s`` of silence a ``: ping`` comment keeps
idle proxies from timing out, followed by an ``event: heartbeat`` (no
``id:``) with the node's delivery position (``server/heartbeat.py``).

A run's stream ends after its terminal event. ``EventSource`` reconnects
after any end, so a request whose cursor is already at a finished run's
terminal event gets ``204 No Content``, which tells it to stop. A channel
the server stops (shutdown, token expiry) ends too; the reconnect is then
refused or served elsewhere. A client that does not read is cut off (there
is no close code in HTTP) after ``ws_send_timeout_s``; it resumes from its
last id.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from aiohttp import web

from sessionstream.core.errors import SessionStreamError
from sessionstream.core.vocabulary import EventType
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.server.pump import Outcome, pump
from sessionstream.server.tail import Channel

if TYPE_CHECKING:
    from sessionstream.server.realtime import Realtime

HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
}


def sse_frame(cursor: int, event_type: str, data: str) -> bytes:
    """One event; ``data`` is single-line JSON, so one ``data:`` line carries it."""
    return f"id: {cursor}\nevent: {event_type}\ndata: {data}\n\n".encode()


async def serve(rt: Realtime, request: web.Request, channel: Channel) -> web.StreamResponse:
    if channel.finished:
        return web.Response(status=204, headers={"Cache-Control": "no-store"})
    frames = rt.frames
    by_seq = channel.kind == "run"

    def encode(event: RecordedEvent) -> bytes:
        cursor = event.version if by_seq else event.position
        return sse_frame(cursor, event.type, frames.text(event))

    first = None
    if channel.snapshot is not None:
        first = sse_frame(channel.snapshot_seq, EventType.MESSAGE_SNAPSHOT, channel.snapshot)
    response = web.StreamResponse(headers=HEADERS)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(
                rt.admission.admit(channel.user_id, channel.kind, "sse", resumed=channel.resumed)
            )
        except SessionStreamError as exc:
            rt.refused(request, exc)
            raise
        conn = stack.enter_context(rt.tails.open(channel))
        await response.prepare(request)
        try:
            outcome = await pump(
                conn,
                response,
                encode,
                rt.stats,
                ping_s=rt.sse_ping_s,
                ping=rt.heartbeats.sse,
                send_timeout_s=rt.send_timeout_s,
                transport=request.transport,
                first=first,
            )
        except ConnectionError:
            return response  # the client went away; it resumes with Last-Event-ID
        if outcome is Outcome.TOO_SLOW:
            rt.stats.too_slow += 1
            transport = request.transport
            if transport is not None:
                transport.abort()  # drop it and its backlog
            return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
    return response
