"""When a run's streamed text becomes a ``message.delta``: as soon as the log can take it.

A fixed window (one delta per 30 ms) made every token wait for the window
even when the writer was idle, and bought nothing under load that the log
could not decide better itself. The rule here is the log's own pace: a run
keeps at most one delta in the writer's pipeline (queued or committing).
Text that arrives while it is there waits, and joins the next delta the
moment that one commits. So:

- on an idle writer each token is written at once (a delta per token);
- under load, a commit takes longer, more text gathers meanwhile, and the
  deltas grow and thin out by themselves, as much as the load needs;
- a run never has two deltas in the writer's queue, so a fast run cannot
  crowd the queue that every other run's deltas go through.

Text gathers up to ``MAX_CHARS``: past that the run stops reading its engine
until the delta in flight commits (the provider's stream waits in its socket),
so one delta, and a run's memory, stay bounded however far the engine runs
ahead of the log.

``floor_s`` (``SESSIONSTREAM_DELTA_COALESCE_MS``, 0 by default) adds a
least spacing between one run's deltas, for an operator who wants fewer
events whatever the load; it never makes text wait once the spacing has
passed.

Pure: the run loop (``services/turn.py``) tells it the time and whether a
delta of the run is still being written.
"""

from __future__ import annotations

#: the text one delta gathers before the run stops reading its engine (characters)
MAX_CHARS = 32_768


class Coalescer:
    """The text of one run not yet written, and whether it is due."""

    __slots__ = ("_chars", "_pending", "floor_s", "last_flush", "max_chars")

    def __init__(self, floor_s: float = 0.0, max_chars: int | None = None) -> None:
        self.floor_s = floor_s
        self.max_chars = MAX_CHARS if max_chars is None else max_chars
        self._pending: list[str] = []
        self._chars = 0
        #: when the last delta was taken (monotonic seconds); none yet
        self.last_flush = float("-inf")

    def __bool__(self) -> bool:
        return bool(self._pending)

    @property
    def full(self) -> bool:
        """Enough text waits: read no more from the engine until it is written."""
        return self._chars >= self.max_chars

    def add(self, text: str) -> None:
        if text:
            self._pending.append(text)
            self._chars += len(text)

    def due(self, now: float, writing: bool) -> bool:
        """Text is waiting, no delta of the run is in the writer's pipeline, and the
        floor (if any) has passed since the last one, or the text is full."""
        if not self._pending or writing:
            return False
        return self.full or now >= self.last_flush + self.floor_s

    def wake_at(self, writing: bool) -> float | None:
        """When the text waiting becomes due by the clock alone: None when nothing
        waits, or when it waits for the delta being written (its commit wakes the run)."""
        if not self._pending or writing:
            return None
        return self.last_flush + self.floor_s

    def take(self, now: float) -> str:
        """The text of the next delta; the spacing counts from ``now``."""
        chunk = "".join(self._pending)
        self._pending.clear()
        self._chars = 0
        self.last_flush = now
        return chunk
