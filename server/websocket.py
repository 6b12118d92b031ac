"""The websocket wire of the realtime channels: handshake, frames, flow control, close codes.

Every data frame is ``server.frames.chat_stream_event(event)`` as JSON,
encoded once per event, websocket header included, and shared as bytes by
every subscriber (``FrameCache``).

Refusals are decided before the upgrade. A websocket upgrade is accepted and
closed at once with ``4000 + status`` (4401, 4403, 4404, 4429...), because
browsers cannot read a handshake's status. A cursor beyond the head gets a
``resync`` frame and close 4409: never silently accepted.

Close codes (the README's table is the reference for clients): 1000 "run
finished" after the terminal event; 1001 shutting down and 1011 server
error (reconnect and resume); 4400 bad cursor or id, 4401 missing, invalid
or expired token, 4403 another run's token, 4404 no such run or session,
4409 resync (final); 4408 too slow and 4429 too many connections (retry).

Delivery and flow control. A connection catches up on its own subscription
(the hub bounds its buffer and falls back to catch-up reads when it
overflows). Once caught up it joins its key's ``Fanout``: one task per run
or session writing each event to every member's socket, so an event costs
one task wake-up and one ``transport.write`` per subscriber. A member whose
socket buffer passes the high-water mark is handed back to its own path,
which waits for the client to drain; a client that reads nothing for
``ws_send_timeout_s`` is closed with 4408 "too slow" (cut off when
even the close frame cannot be flushed). So one slow client holds at most
the high-water mark plus one frame and never slows anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from aiohttp import hdrs, web
from multidict import CIMultiDict

from sessionstream.core.errors import RateLimited, SessionStreamError
from sessionstream.core.vocabulary import TERMINAL
from sessionstream.server.admission import ShuttingDown
from sessionstream.server.drain import drained, flushed
from sessionstream.server.fanout import DETACHED, RUN_END, join_when_caught_up
from sessionstream.server.frames import dumps, ws_text_frame
from sessionstream.server.tail import GONE, Connection, Resync

if TYPE_CHECKING:
    from sessionstream.server.realtime import Realtime, Resolver

SUBPROTOCOL = "sessionstream.v1"
TOO_SLOW = (4408, "too slow")
#: the close of a connection whose sender crashed: the client reconnects and resumes
SERVER_ERROR = (1011, "server error; resume")
#: the connection now belongs to its key's fanout
JOINED = (0, "joined")
#: clients send nothing that matters; keep what they may send small
MAX_CLIENT_MESSAGE = 4096

End = tuple[int, str] | None


def close_code(exc: SessionStreamError) -> int:
    """The websocket close code that carries an HTTP refusal to a browser."""
    if isinstance(exc, ShuttingDown):
        return 1001
    if 400 <= exc.status < 500:
        return 4000 + exc.status
    return 1011


def handshake_request(request: web.Request) -> web.Request:
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


async def serve(rt: Realtime, request: web.Request, resolve: Resolver) -> web.WebSocketResponse:
    ws: web.WebSocketResponse = web.WebSocketResponse(
        protocols=(SUBPROTOCOL,),
        heartbeat=rt.heartbeat_s or None,
        compress=False,  # a deflate context per socket costs ~300 KB and a per-client encode
        max_msg_size=MAX_CLIENT_MESSAGE,
        timeout=rt.close_timeout_s,
    )
    with contextlib.ExitStack() as stack:
        try:
            channel = await resolve(request, False)
            stack.enter_context(
                rt.admission.admit(channel.user_id, channel.kind, "ws", resumed=channel.resumed)
            )
        except SessionStreamError as exc:
            await _refuse(rt, request, ws, exc)
            return ws
        await ws.prepare(handshake_request(request))
        conn = stack.enter_context(rt.tails.open(channel))
        # The sender is its own task, so waking it per event resumes two frames,
        # not the whole middleware stack; this task only reads (pongs, the close).
        sender = rt.supervisor.spawn(
            "ws-sender",
            lambda: _sender(rt, ws, request, conn),
            restart=False,
            on_crash=lambda _exc: _close_crashed(rt, ws, request),
        )
        try:
            async for _message in ws:
                pass  # clients send nothing that matters
        finally:
            conn.stop(GONE, "client gone")  # wake the sender, wherever it waits
            try:
                await asyncio.wait({sender}, timeout=rt.close_timeout_s + 2.0)
            finally:
                sender.cancel()
    return ws


async def _refuse(
    rt: Realtime, request: web.Request, ws: web.WebSocketResponse, exc: SessionStreamError
) -> None:
    """Accept the upgrade only to close it with the refusal's code (and a resync frame)."""
    rt.refused(request, exc)
    if exc.status == 401 and rt.auth_failures is not None:
        # refused after the upgrade, out of the middleware's sight: a guessed
        # token spends from its address's bucket here, as over HTTP
        with contextlib.suppress(RateLimited):
            rt.auth_failures.check(request.remote or "unknown")
    await ws.prepare(handshake_request(request))
    if isinstance(exc, Resync):
        resync = {"type": "resync", "reason": exc.message, "head": exc.head}
        with contextlib.suppress(ConnectionError):
            await ws.send_str(dumps(resync))
    await _close(rt, ws, request, close_code(exc), exc.message)


async def _sender(
    rt: Realtime, ws: web.WebSocketResponse, request: web.Request, conn: Connection
) -> None:
    try:
        end = await _send_frames(rt, ws, request, conn)
    except ConnectionError:
        return  # the client went away mid-send
    if end is not None and not ws.closed:
        await _close(rt, ws, request, *end)


def _close_crashed(rt: Realtime, ws: web.WebSocketResponse, request: web.Request) -> None:
    """A sender that crashed sends nothing more: close with 1011 so the client resumes
    from its last frame (here or on another node) instead of waiting on a dead socket."""
    if not ws.closed:
        rt.supervisor.spawn(
            "ws-close",
            lambda: _close(rt, ws, request, *SERVER_ERROR),
            restart=False,
        )


def _unless_gone(end: End) -> End:
    return end if end is None or end[0] != GONE else None


async def _send_frames(
    rt: Realtime, ws: web.WebSocketResponse, request: web.Request, conn: Connection
) -> End:
    """Write the channel's frames; the close to send, or None when the client left.

    Frames are shared, pre-encoded bytes written straight to the transport
    (aiohttp's writer would re-encode the same frame for every subscriber).
    The connection catches up on its own subscription, then joins its key's
    ``Fanout`` while it keeps up, and comes back here when it falls behind: a
    write that leaves more than the high-water mark buffered waits for the
    client to drain it, at most ``send_timeout_s`` (4408).
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
        rt.stats.frames_sent += 1
    while True:
        end = await _send_own(rt, conn, transport)
        if end is not JOINED:
            return end
        assert conn.released is not None
        end = await conn.released
        if end is not DETACHED:
            return _unless_gone(end)
        if conn.end is not None:
            return _unless_gone(conn.end)
        if not await _drained(rt, transport):
            return TOO_SLOW
        if conn.end is not None:  # stopped while it drained
            return _unless_gone(conn.end)
        conn.subscription = rt.store.subscribe(conn.cursor, keys=channel.keys)


async def _send_own(rt: Realtime, conn: Connection, transport: asyncio.Transport) -> End:
    """Send from the connection's own subscription until it ends or joins the fanout."""
    stats, frames, ws = rt.stats, rt.frames, conn.ws
    is_run = conn.channel.kind == "run"
    assert ws is not None
    joined: list[bool] = []

    def join_while_idle() -> None:
        # caught up with no event coming (a run paused, a quiet session): join now, not
        # at the next event, or a reader that fell behind stays off the fanout meanwhile
        if not rt.closing and join_when_caught_up(conn, rt.fanouts, rt.store, stats, frames):
            joined.append(True)

    conn.subscription.on_idle = join_while_idle
    async for event in conn.subscription:
        if ws.closed or transport.is_closing():
            return None  # the client is closing: nothing may follow its close frame
        transport.write(frames.wire(event))
        stats.frames_sent += 1
        conn.cursor = event.position
        ended = is_run and event.type in TERMINAL
        # a stored payload is not held while this client drains or the next page is read
        del event
        if transport.get_write_buffer_size() > conn.high and not await _drained(rt, transport):
            return TOO_SLOW
        if ended:
            return RUN_END
        if not rt.closing and join_when_caught_up(conn, rt.fanouts, rt.store, stats, frames):
            return JOINED
    return JOINED if joined else _unless_gone(conn.end)


async def _drained(rt: Realtime, transport: asyncio.Transport) -> bool:
    """Wait for the client to drain its backlog; False (counted) once it reads nothing for the
    send timeout (``server/drain.py``: progress, not the whole write, is timed)."""
    if await drained(transport, rt.send_timeout_s):
        return True
    rt.stats.too_slow += 1
    return False


async def _close(
    rt: Realtime, ws: web.WebSocketResponse, request: web.Request, code: int, reason: str
) -> None:
    """Close with ``code``; a client that stops reading before the close frame is cut off.

    aiohttp's close returns once the close frame is queued and the transport is
    closing, maybe with a large frame still in the buffer: a client still reading
    it gets the rest (it used to be aborted mid-frame)."""
    rt.stats.count_close(code)
    message = reason.encode()[:120]
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(rt.close_timeout_s + 1.0):
            await ws.close(code=code, message=message)
    transport = request.transport
    if transport is not None and not await flushed(transport, rt.close_timeout_s):
        transport.abort()  # never keep a dead client's backlog in memory
