"""The SQLite writer's own thread: one queue in, one loop callback out.

Each batch hops to the writer thread and back. Through ``run_in_executor`` a
hop also built a ``concurrent.futures.Future`` (a condition variable, its
callbacks), took the executor's lock and chained the two futures; here a job
is a tuple on a ``SimpleQueue`` and its answer one ``call_soon_threadsafe``
(``docs/explanation/append-path.md``).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: (loop, future, function, arguments); None stops the thread
Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _settle(future: asyncio.Future[Any], ok: bool, outcome: Any) -> None:
    if future.cancelled():  # the caller stopped waiting; what ran, ran
        return
    if ok:
        future.set_result(outcome)
    else:
        future.set_exception(outcome)


class WriterThread:
    """Runs functions one at a time, in order, on one thread."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on the thread; the future is the caller loop's."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                outcome, ok = fn(*args), True
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome, ok = exc, False
            try:
                loop.call_soon_threadsafe(_settle, future, ok, outcome)
            except RuntimeError:  # the loop is closed: nobody is waiting
                pass
            del job, future, outcome

    def shutdown(self) -> None:
        """Stop after the jobs already queued, and wait for it."""
        self._jobs.put(None)
        self._thread.join()
