"""The queue in front of a backend's single writer.

Callers enqueue their append requests and await their own answer; the writer
takes everything queued as one batch, commits it in one transaction and
answers each caller (a request that fails, fails alone). Both backends write
this way; what a batch costs differs, how it is queued and answered does not.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sessionstream.core.errors import Overloaded, SessionStreamError, ValidationFailed
from sessionstream.eventstore.model import AppendRequest, AppendResult

#: a caller's answer: its results, or why its requests were refused
Outcome = list[AppendResult] | SessionStreamError


@dataclass(slots=True)
class Pending:
    requests: Sequence[AppendRequest]
    future: asyncio.Future[list[AppendResult]]


class GroupCommit:
    def __init__(self, max_batch: int, max_pending: int = 10_000) -> None:
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.refused = 0
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    async def submit(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        for request in requests:
            if not request.events:
                raise ValidationFailed(f"append to {request.stream_id} has no events")
        if self._queue.qsize() >= self.max_pending:
            # the writer is falling behind: refuse now rather than queue without bound
            self.refused += 1
            raise Overloaded(f"{self.max_pending} appends are already waiting; retry shortly")
        future: asyncio.Future[list[AppendResult]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Pending(requests, future))
        return await future

    async def next_batch(self) -> list[Pending]:
        """Wait for one request, then take whatever else is queued (up to ``max_batch``)."""
        batch = [await self._queue.get()]
        while not self._queue.empty() and len(batch) < self.max_batch:
            batch.append(self._queue.get_nowait())
        return batch

    def fail(self, batch: Sequence[Pending], error: SessionStreamError) -> None:
        """The whole batch failed (nothing of it was committed)."""
        for item in batch:
            self._queue.task_done()
            if not item.future.done():
                item.future.set_exception(error)

    def answer(self, batch: Sequence[Pending], outcomes: Sequence[Outcome]) -> int:
        """Answer each caller; returns how many events were newly appended."""
        appended = 0
        for item, outcome in zip(batch, outcomes, strict=True):
            self._queue.task_done()
            if isinstance(outcome, BaseException):
                if not item.future.done():
                    item.future.set_exception(outcome)
                continue
            appended += sum(len(r.events) for r in outcome if not r.duplicate)
            if not item.future.done():
                item.future.set_result(outcome)
        return appended

    async def drained(self) -> None:
        """Every request queued so far has its answer."""
        await self._queue.join()


class IdleWork:
    """What the writer does between batches, one item at a time, only while no append
    waits: packing a finished run's deltas (``eventstore/packing.py``) is another run's
    work, and a token delta must not wait for it behind the writer.

    Under a load that never lets the queue empty, the work would wait forever and
    the rows it would pack pile up; past ``backlog`` items, one is done after each
    batch whatever waits, so a delta waits for one item at most.
    """

    def __init__(self, commits: GroupCommit, backlog: int = 256) -> None:
        self._commits = commits
        self.backlog = backlog
        self._items: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, items: Iterable[str]) -> None:
        self._items.extend(items)

    def next(self) -> str | None:
        """The item to do now, or None when there is none or appends are waiting."""
        if not self._items:
            return None
        if self._commits.waiting and len(self._items) <= self.backlog:
            return None
        return self._items.popleft()

    def pending(self) -> frozenset[str]:
        """The items not done yet."""
        return frozenset(self._items)

    def take_all(self) -> list[str]:
        """Every item left (a store closing does them before it stops)."""
        items = list(self._items)
        self._items.clear()
        return items
