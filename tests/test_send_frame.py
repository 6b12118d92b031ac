"""Frames written to the socket outside the GIL (``server/drain.py`` ``send_frame``)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

import pytest
import uvloop

from sessionstream.server.drain import send_frame, socket_fd

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


async def _send_and_read(frames: list[bytes]) -> tuple[bytes, int]:
    """Write ``frames`` with ``send_frame`` to one end of a socket pair; what the other
    end reads, and how many bytes the transport had to queue after the first frame."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    fd = socket_fd(transport)
    assert fd == ours.fileno()
    send_frame(transport, fd, frames[0])
    queued = transport.get_write_buffer_size()
    for frame in frames[1:]:
        send_frame(transport, fd, frame)
    theirs.setblocking(False)
    want, got = sum(map(len, frames)), bytearray()
    while len(got) < want:
        try:
            got += theirs.recv(1 << 16)
        except BlockingIOError:
            await asyncio.sleep(0.001)
    transport.close()
    theirs.close()
    return bytes(got), queued


@pytest.mark.parametrize("loop", LOOPS)
def test_what_the_socket_cannot_take_is_queued_and_order_holds(loop: str) -> None:
    big = bytes(range(256)) * 16_384  # 4 MiB, far beyond the socket's buffer
    frames = [big, b"second", b"third" * 100]
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        got, queued = runner.run(_send_and_read(frames))
    assert 0 < queued < len(big)  # the socket took part of it, the transport the rest
    assert got == b"".join(frames)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_small_frame_goes_straight_to_the_socket(loop: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        got, queued = runner.run(_send_and_read([b"x" * 100, b"y"]))
    assert queued == 0
    assert got == b"x" * 100 + b"y"


class _TLSTransport(asyncio.WriteTransport):
    """A transport that says it encrypts: its socket must never be written to."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.sock = socket.socket()

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "sslcontext":
            return ssl.create_default_context()
        if name == "socket":
            return self.sock
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))


def test_a_tls_transport_is_always_written_through() -> None:
    transport = _TLSTransport()
    fd = socket_fd(transport)
    assert fd == -1
    send_frame(transport, fd, b"frame")
    transport.sock.close()
    assert transport.written == [b"frame"]
