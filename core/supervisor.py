"""One supervisor for every long-lived background task of a node.

A background task that dies takes a node's service with it without a word:
an event pump killed by one untranslated driver error left its websocket
subscribers connected and fed nothing, ``/healthz`` said OK, and nothing was
logged until shutdown. So no background task is started with a bare
``create_task``: each is ``Supervisor.spawn``-ed, and the rule for what
happens when it raises lives here, once, instead of a ``try`` in each loop.

- An unexpected exception (not a ``SessionStreamError``) is logged with its
  traceback and counted per task (``crashes``, exported at ``/metrics``). A
  ``SessionStreamError`` that escapes a loop (storage unavailable) is logged
  as a warning: it is an outage, not a bug, and it is not counted as a crash.
- A restartable task's body is called again after a backoff that doubles
  from ``backoff_initial_s`` up to ``backoff_max_s``. The body owns its
  position (the pump's published position, the writer's committed batch), so
  calling it again resumes where it stopped; ``on_crash`` runs first for
  whatever must be handed back at once (a fanout's subscribers).
- A task is *down* from its first crash until it has run ``settle_s``
  without crashing. Down longer than ``restart_bound_s``, it makes the node
  unhealthy (``unhealthy()``, which ``/healthz`` answers 503 with), naming
  it, so a load balancer stops sending the node clients.

Tasks that belong to one run or one connection (``restart=False``) are
logged and counted the same way, their ``on_crash`` hands their work back,
and they are not restarted: their owner starts another when one is needed.
Timer callbacks (a run token's expiry) are ``guard``-ed: logged, counted and
tried again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sessionstream.core.errors import SessionStreamError

log = logging.getLogger("sessionstream.supervisor")

#: how many times a guarded callback is tried before it is given up (and left logged)
GUARD_ATTEMPTS = 5

Body = Callable[[], Awaitable[None]]
OnCrash = Callable[[BaseException], None]


@dataclass(slots=True)
class TaskState:
    """What the node knows of one restartable task (read by ``/healthz`` and ``/metrics``)."""

    name: str
    started_at: float = field(default_factory=time.monotonic)
    #: when the current run of crashes began; None while the task is healthy
    down_since: float | None = None
    restarts: int = 0
    last_error: str | None = None
    running: bool = True


class Supervisor:
    """Spawns background tasks, restarts them when they crash, and says which are down."""

    def __init__(
        self,
        *,
        restart_bound_s: float = 30.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 5.0,
        settle_s: float = 1.0,
    ) -> None:
        self.restart_bound_s = restart_bound_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.settle_s = settle_s
        #: unexpected exceptions per task kind (the ``task`` label of the metric)
        self.crashes: dict[str, int] = {}
        #: restartable tasks by name, while they exist
        self.tasks: dict[str, TaskState] = {}

    def spawn(
        self,
        name: str,
        body: Body,
        *,
        kind: str | None = None,
        restart: bool = True,
        on_crash: OnCrash | None = None,
    ) -> asyncio.Task[None]:
        """Run ``body`` as a supervised task; ``kind`` (default ``name``) labels its crashes.

        A task named like one still running replaces its health entry: names
        are unique per node for restartable tasks (the store's writer, the
        pump, the run upkeep...), per-run tasks pass ``restart=False``.
        """
        label = kind or name
        self.crashes.setdefault(label, 0)
        coro = (
            self._restarting(name, label, body, on_crash)
            if restart
            else self._once(name, label, body, on_crash)
        )
        return asyncio.create_task(coro, name=name)

    async def _once(self, name: str, kind: str, body: Body, on_crash: OnCrash | None) -> None:
        try:
            await body()
        except Exception as exc:
            self.report(name, kind, exc, "it is not restarted")
            if on_crash is not None:
                on_crash(exc)

    async def _restarting(self, name: str, kind: str, body: Body, on_crash: OnCrash | None) -> None:
        state = self.tasks[name] = TaskState(name)
        delay = self.backoff_initial_s
        try:
            while True:
                state.started_at = time.monotonic()
                state.running = True
                try:
                    await body()
                    return  # a body that returns has finished its work
                except Exception as exc:
                    now = time.monotonic()
                    if state.down_since is not None and now - state.started_at >= self.settle_s:
                        state.down_since = None  # it had recovered; this is a new failure
                        delay = self.backoff_initial_s
                    if state.down_since is None:
                        state.down_since = now
                    state.running = False
                    state.last_error = repr(exc)
                    self.report(name, kind, exc, f"restarting in {delay:.2f}s")
                    if on_crash is not None:
                        on_crash(exc)
                await asyncio.sleep(delay)
                delay = min(self.backoff_max_s, delay * 2)
                state.restarts += 1
        finally:
            if self.tasks.get(name) is state:
                del self.tasks[name]

    def guard(self, kind: str, callback: Callable[..., object]) -> Callable[..., None]:
        """A timer's callback, supervised: one that raises is logged, counted and tried
        again after a backoff (``GUARD_ATTEMPTS`` times in all) instead of ending in the
        event loop's handler, where nothing counts it and nobody retries."""

        def run(*args: object, attempt: int = 1) -> None:
            try:
                callback(*args)
            except Exception as exc:
                again = attempt < GUARD_ATTEMPTS
                self.report(kind, kind, exc, "trying again" if again else "giving up")
                if again:
                    delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (attempt - 1))
                    loop = asyncio.get_running_loop()
                    loop.call_later(delay, lambda: run(*args, attempt=attempt + 1))

        return run

    def report(self, name: str, kind: str, exc: Exception, then: str) -> None:
        """Log ``exc`` (with its traceback unless it is a ``SessionStreamError``) and count
        it under ``kind``; also for work that is not a task of its own (a run)."""
        if isinstance(exc, SessionStreamError):
            log.warning("background task %s stopped: %s; %s", name, exc.message, then)
            return
        self.crashes[kind] = self.crashes.get(kind, 0) + 1
        log.error("background task %s crashed: %r; %s", name, exc, then, exc_info=exc)

    def down(self, name: str, now: float | None = None) -> float | None:
        """For how long ``name`` has been failing to restart; None while it is healthy."""
        state = self.tasks.get(name)
        if state is None or state.down_since is None:
            return None
        now = time.monotonic() if now is None else now
        if state.running and now - state.started_at >= self.settle_s:
            state.down_since = None  # it has run long enough since its restart
            return None
        return now - state.down_since

    def unhealthy(self, now: float | None = None) -> dict[str, float]:
        """Tasks down for longer than ``restart_bound_s``, with for how long."""
        now = time.monotonic() if now is None else now
        failing: dict[str, float] = {}
        for name in list(self.tasks):
            down_for = self.down(name, now)
            if down_for is not None and down_for > self.restart_bound_s:
                failing[name] = down_for
        return failing
