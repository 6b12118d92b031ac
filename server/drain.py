"""When a client that is slow to read counts as too slow: the one rule for every wire.

A client is cut off when it makes no progress for the send timeout, not when
one write takes longer than it. The difference shows on a large frame: a run's
``message.completed`` carries the whole reply, megabytes for a long one, and a
client on a slow link reads it steadily for longer than the timeout. Timing
the whole write cut such a reader off mid-frame, although it never stopped
reading. Timing the silence between two signs of progress is what nginx's
``send_timeout`` does ("between two successive write operations"), and a
client that stops reading is still cut off after the timeout: its backlog stops
shrinking once the kernel's buffers are full.

Progress is the transport's write buffer shrinking, looked at every
``POLL_S`` while a write waits (slow clients only; a client that keeps up
never gets here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

#: how often a blocked sender looks at its client's backlog (slow clients only)
POLL_S = 0.01


async def drained(transport: asyncio.WriteTransport, timeout_s: float) -> bool:
    """Wait until the client has read the buffer down to the low-water mark.

    False if it read nothing for ``timeout_s``. A transport that closes counts
    as drained: the caller's subscription ends on its own.
    """
    low = transport.get_write_buffer_limits()[0]
    return await _progressing(
        transport,
        timeout_s,
        lambda: transport.is_closing() or transport.get_write_buffer_size() <= low,
    )


async def flushed(transport: asyncio.WriteTransport, timeout_s: float) -> bool:
    """Wait until the client has read everything written, the close frame included.

    A closing transport still flushes its buffer before it lets go of the socket;
    only ``abort()`` drops it, so a connection is aborted only when this says
    the client stopped reading.
    """
    return await _progressing(transport, timeout_s, lambda: transport.get_write_buffer_size() == 0)


async def _progressing(
    transport: asyncio.WriteTransport, timeout_s: float, done: Callable[[], bool]
) -> bool:
    loop = asyncio.get_running_loop()
    left = transport.get_write_buffer_size()
    deadline = loop.time() + timeout_s
    while not done():
        await asyncio.sleep(POLL_S)
        now, size = loop.time(), transport.get_write_buffer_size()
        if size < left:
            deadline = now + timeout_s
        elif now >= deadline:
            return False
        left = size
    return True


async def written(
    write: Awaitable[None], transport: asyncio.WriteTransport | None, timeout_s: float
) -> bool:
    """Await a response's ``write`` (which waits for the client to drain), bounded the same way.

    False, with the write cancelled, if the client read nothing for ``timeout_s``.
    """
    task = asyncio.ensure_future(write)
    loop = asyncio.get_running_loop()
    left = transport.get_write_buffer_size() if transport is not None else 0
    deadline = loop.time() + timeout_s
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                task.result()  # a ConnectionError (the client left) propagates
                return True
            now = loop.time()
            size = transport.get_write_buffer_size() if transport is not None else left
            if size < left:
                deadline = now + timeout_s
            elif now >= deadline:
                return False
            left = size
    finally:
        if not task.done():
            task.cancel()
