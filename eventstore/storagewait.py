"""Waiting out a storage outage instead of failing the request that met it.

A database failover makes storage refuse everything for seconds: the old
primary is gone or read-only, the new one is not promoted yet. Answering
each request that meets it with a 503 pushes the retry onto every client;
a client that wants no 5xx at all cannot tell a failover from a fault. So a
request that meets such a refusal waits and tries again, as long as storage
has been refusing for less than ``bound_s`` in a row (:class:`StorageWait`).
The bound is the outage's, not the request's: once storage has refused
everything for longer, each request is tried once and its 503 (with
``Retry-After``) goes out at once, so a long outage does not hold a
request for the whole bound each. Any answer from storage ends the outage.

Waiting costs memory: a waiting request keeps its body and its task. At
most ``max_waiting`` requests wait at once; the next one is refused at once
(503 ``storage_unavailable``, ``Retry-After``), as the append queue's own
limit refuses appends.

Some callers must not wait: a health probe has to say now that storage is
unavailable, and a background loop with a retry of its own (the event
pump) would only stall. They run inside :func:`impatient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

from sessionstream.core.errors import StorageUnavailable

T = TypeVar("T")

#: the longest pause between two tries while storage refuses
RETRY_MAX_S = 0.5
#: how soon a refused waiter should try again (``Retry-After``)
RETRY_AFTER_S = 1.0

_IMPATIENT: ContextVar[bool] = ContextVar("storage_impatient", default=False)


@contextlib.contextmanager
def impatient() -> Iterator[None]:
    """Storage calls in this block (and tasks it starts) fail at once instead of waiting."""
    token = _IMPATIENT.set(True)
    try:
        yield
    finally:
        _IMPATIENT.reset(token)


def is_impatient() -> bool:
    return _IMPATIENT.get()


class StorageWait:
    """One outage clock and one count of waiters, shared by a store's reads (or writes)."""

    def __init__(self, bound_s: float, max_waiting: int) -> None:
        self.bound_s = bound_s
        self.max_waiting = max_waiting
        #: requests waiting now
        self.waiting = 0
        #: since when storage has refused in a row (monotonic); None: it answers
        self.failing_since: float | None = None
        #: requests that waited and then got through, and those refused for the limit
        self.rode_out = 0
        self.refused = 0

    def answered(self) -> None:
        self.failing_since = None

    def left(self) -> float:
        """Refused now: how much longer a request may wait (0: answer the 503)."""
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        if is_impatient():
            return 0.0
        return self.failing_since + self.bound_s - now

    def full(self) -> StorageUnavailable | None:
        """The refusal for one waiter too many, or None if there is room."""
        if self.waiting < self.max_waiting:
            return None
        self.refused += 1
        return StorageUnavailable(
            f"storage is unavailable and {self.waiting} requests already wait for it; retry",
            retry_after=RETRY_AFTER_S,
        )

    async def patiently(
        self, attempt: Callable[[], Awaitable[T]], waitable: Callable[[BaseException], bool]
    ) -> T:
        """``attempt()``, tried again while it raises what ``waitable`` accepts and the
        outage is younger than the bound; then its error is raised."""
        delay = 0.05
        waited = False
        try:
            while True:
                try:
                    result = await attempt()
                except Exception as exc:
                    if not waitable(exc):
                        raise
                    left = self.left()
                    if left <= 0:
                        raise
                    if not waited:
                        refusal = self.full()
                        if refusal is not None:
                            raise refusal from exc
                        self.waiting += 1
                        waited = True
                    await asyncio.sleep(min(delay, left))
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                self.answered()
                self.rode_out += waited
                return result
        finally:
            if waited:
                self.waiting -= 1
