"""The ordered pump: the shared log, published to this process's hub in order.

With several nodes on one database, events reach a node's subscribers from
two places: its own writer and every other node's. Publishing them as they
arrive could deliver position 12 before 11; subscribers tail by position and
would skip 11. So nothing publishes to the hub but this pump, and it only
ever publishes the next position: events this process committed are handed
over directly (no read), anything else is read from the log. It learns that
the head moved from its own writer, from ``NOTIFY`` (any node's commit), and
from a periodic poll that covers a lost notification or listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from sessionstream.core.errors import SessionStreamError
from sessionstream.eventstore.hub import Hub
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.eventstore.storagewait import impatient

log = logging.getLogger("sessionstream.eventstore.postgres")

#: committed runs kept for the pump while it cannot keep up; beyond, it re-reads
MAX_LOCAL_RUNS = 4096


class LogPump:
    def __init__(
        self,
        hub: Hub,
        read_after: Callable[[int], Awaitable[list[RecordedEvent]]],
        poll: Callable[[], Awaitable[int]],
        *,
        poll_interval_s: float = 1.0,
    ) -> None:
        """``read_after(position)`` reads a page of the log; ``poll()`` returns the head."""
        self.hub = hub
        self._read_after = read_after
        self._poll = poll
        self.poll_interval_s = poll_interval_s
        self.target = hub.published_position
        self._local: dict[int, list[RecordedEvent]] = {}
        self._wake = asyncio.Event()

    def committed(self, run: list[RecordedEvent]) -> None:
        """This process committed ``run`` (contiguous positions): no read needed."""
        self._local[run[0].position] = run
        if len(self._local) > MAX_LOCAL_RUNS:
            del self._local[min(self._local)]
        self.head_moved(run[-1].position)

    def head_moved(self, head: int) -> None:
        """Some node committed up to ``head`` (a NOTIFY payload, a poll)."""
        if head > self.target:
            self.target = head
        self._wake.set()

    async def run(self) -> None:
        """Publish forever; the store's supervisor owns it and calls it again after a crash.

        Everything the pump knows lives on the object, and the hub's
        published position is where publishing resumes, so a restarted pump
        goes on from the last position it delivered: subscribers stay
        registered on the hub meanwhile and get the next position next. It
        polls the head at once, in case the crash swallowed a notification.
        """
        last_poll: float | None = None
        self._wake.set()
        with impatient():  # its reads never wait out an outage: it polls again instead
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_interval_s):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    if last_poll is None or time.monotonic() - last_poll >= self.poll_interval_s:
                        last_poll = time.monotonic()
                        self.head_moved(await self._poll())
                    await self.drain()
                except SessionStreamError as exc:
                    log.warning("event pump: %s; retrying", exc.message)
                    await asyncio.sleep(self.poll_interval_s)

    async def drain(self) -> None:
        """Publish every position up to the known head, in order, without gaps."""
        hub = self.hub
        while hub.published_position < self.target:
            run = self._local.pop(hub.published_position + 1, None)
            if run is None:
                page = await self._read_after(hub.published_position)
                run = [e for e in page if e.position > hub.published_position]
                if not run:
                    break
            hub.publish(run)
            for first in [k for k in self._local if k <= hub.published_position]:
                del self._local[first]
