"""The one loop that writes a tail of the log to a server-sent-events response.

Both SSE wires (``/api/realtime/...`` with ``Accept: text/event-stream``, and
the Trigger.dev stream) pump the same way: the next event or, after
``ping_s`` of silence, a keep-alive (``ping()``: a ``: ping`` comment with the
node's heartbeat, ``server/heartbeat.py``) so idle proxies keep the
connection and the client knows the node still delivers; every write bounded
by ``send_timeout_s`` of no progress (``server/drain.py``), so a client that
stops reading is cut off instead of holding a buffer and a task forever, and
one that reads a large frame slowly is not; and an end that says why, because the
wires end differently. A run channel's body ends cleanly after the terminal
event on both; a stopped channel (shutdown, token expiry) ends cleanly on
ours but is dropped on the Trigger.dev stream, whose SDK takes a clean end
for "complete".
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from sessionstream.core.vocabulary import TERMINAL
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.server.drain import written
from sessionstream.server.tail import Connection

PING = b": ping\n\n"
#: the most a chunked body adds to a write: its size in hex and two CRLFs
CHUNK_HEAD = 32


class Outcome(enum.Enum):
    """How a pump ended."""

    #: the run's terminal event was sent: the stream is complete
    FINISHED = "finished"
    #: the server stopped the channel: shutdown, token expiry
    STOPPED = "stopped"
    #: the caller's deadline passed (the Trigger.dev ``Timeout-Seconds``)
    TIMED_OUT = "timed_out"
    #: a write did not drain within the send timeout
    TOO_SLOW = "too_slow"


class FrameCount(Protocol):
    frames_sent: int


async def pump(
    conn: Connection,
    response: web.StreamResponse,
    encode: Callable[[RecordedEvent], bytes],
    count: FrameCount,
    *,
    ping_s: float,
    ping: Callable[[], bytes] = lambda: PING,
    send_timeout_s: float,
    transport: asyncio.Transport | None,
    first: bytes | None = None,
    deadline: float | None = None,
) -> Outcome:
    """Send ``first``, then every event of ``conn`` until one of the ``Outcome``s.

    ``transport`` is the response's, watched for progress while a write waits.
    ``deadline`` is in the loop's clock. ``ConnectionError`` (the client left)
    propagates: the caller has nothing left to send.
    """

    conn.transport = transport
    high = transport.get_write_buffer_limits()[1] if transport is not None else 0

    async def write(data: bytes) -> bool:
        if transport is None or transport.get_write_buffer_size() + len(data) + CHUNK_HEAD < high:
            # under the high-water mark aiohttp's write cannot wait for the client
            try:
                async with asyncio.timeout(send_timeout_s):
                    await response.write(data)
            except TimeoutError:
                return False
            return True
        return await written(response.write(data), transport, send_timeout_s)

    if first is not None:
        if not await write(first):
            return Outcome.TOO_SLOW
        count.frames_sent += 1
    loop = asyncio.get_running_loop()
    subscription = conn.subscription
    ends = conn.channel.kind == "run"
    while True:
        wait = ping_s
        if deadline is not None:
            wait = min(wait, deadline - loop.time())
            if wait <= 0:
                return Outcome.TIMED_OUT
        try:
            async with asyncio.timeout(wait):
                event = await anext(subscription)
        except TimeoutError:
            if deadline is not None and deadline - loop.time() <= 0:
                return Outcome.TIMED_OUT
            if not await write(ping()):
                return Outcome.TOO_SLOW
            continue
        except StopAsyncIteration:
            return Outcome.STOPPED
        frame, position, ended = encode(event), event.position, ends and event.type in TERMINAL
        del event  # a stored payload is not held while the client drains or the next page is read
        if not await write(frame):
            return Outcome.TOO_SLOW
        count.frames_sent += 1
        conn.cursor = position
        if ended:
            return Outcome.FINISHED
