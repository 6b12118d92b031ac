"""A lean websocket subscriber for ``bench.stream``'s token part: the arrival time of each
frame, and nothing else, so the instrument costs little beside the server it measures.

The subscribers of the token bench share two cores with the server and the fake
provider. A full client (aiohttp's ``ClientWebSocketResponse``: a reader task, a
message object and a queue hand-off per frame) costs several microseconds a frame;
a reply that is a delta per token is 60,000 frames in about a second at 100 runs x 10
subscribers. This one is an ``asyncio.Protocol`` that does the RFC 6455 handshake
and splits the server's frames (unmasked, whole) in ``data_received``, noting the
clock once per read: what is measured is unchanged (the moment the bytes of a frame
are read here), and ``bench.stream_tokens.figures`` still checks every token of every
subscriber arrived, once and in order.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from typing import cast
from urllib.parse import urlencode

#: frame opcodes (RFC 6455 5.2)
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask), for the pong and the close this side sends."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


class LeanSubscriber(asyncio.Protocol):
    """One run-channel websocket: ``frames`` is ``(arrival, payload)`` per text frame."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.frames: list[tuple[float, bytes]] = []
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.fragments: list[bytes] = []
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = loop.create_future()
        #: set once ``want`` text frames have arrived (the catch-up before the window)
        self.want = 0
        self.enough: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            if b" 101 " not in status:
                self._fail(ConnectionError(f"no upgrade: {status!r}"))
                return
            del buffer[: end + 4]
            self.upgraded = True
        start, size = 0, len(buffer)
        while size - start >= 2:
            first, second = buffer[start], buffer[start + 1]
            length, at = second & 0x7F, start + 2
            if length == 126:
                if size - at < 2:
                    break
                (length,) = struct.unpack_from("!H", buffer, at)
                at += 2
            elif length == 127:
                if size - at < 8:
                    break
                (length,) = struct.unpack_from("!Q", buffer, at)
                at += 8
            if second & 0x80:
                self._fail(ConnectionError("a masked frame from the server"))
                return
            if size - at < length:
                break
            payload = bytes(buffer[at : at + length])
            start = at + length
            self._frame(first & 0x80, first & 0x0F, payload, now)
        del buffer[:start]

    def _frame(self, fin: int, opcode: int, payload: bytes, now: float) -> None:
        if opcode in (TEXT, BINARY, CONTINUATION):
            self.fragments.append(payload)
            if not fin:
                return
            whole = payload if len(self.fragments) == 1 else b"".join(self.fragments)
            self.fragments.clear()
            self.frames.append((now, whole))
            if len(self.frames) >= self.want and not self.enough.done():
                self.enough.set_result(None)
        elif opcode == PING and self.transport is not None:
            self.transport.write(masked(PONG, payload))
        elif opcode == CLOSE and self.transport is not None:
            self.transport.write(masked(CLOSE, payload[:2]))
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        for waiter in (self.enough, self.closed):
            if not waiter.done():
                waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.enough.done():
            self.enough.set_exception(exc or ConnectionError("closed before the catch-up"))
        if not self.closed.done():
            self.closed.set_result(None)


def upgrade_request(host: str, port: int, path: str, query: dict[str, str]) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = (
        f"GET {path}?{urlencode(query)} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def subscribe(port: int, run_id: str, token: str, ready: int) -> LeanSubscriber:
    """A run channel's socket once its first ``ready`` frames (the catch-up) are in."""
    request = upgrade_request("127.0.0.1", port, f"/api/realtime/runs/{run_id}", {"token": token})
    loop = asyncio.get_running_loop()
    _, sub = await loop.create_connection(lambda: LeanSubscriber(request), "127.0.0.1", port)
    sub.want = ready
    await asyncio.wait_for(sub.enough, 60)
    return sub


async def connect_all(
    port: int, targets: list[tuple[str, str]], ready: int, batch: int = 250
) -> list[LeanSubscriber]:
    subs: list[LeanSubscriber] = []
    for i in range(0, len(targets), batch):
        chunk = targets[i : i + batch]
        subs += await asyncio.gather(*(subscribe(port, r, t, ready) for r, t in chunk))
    return subs
