"""One count of open realtime connections, and the two limits on it.

Every wire holds a connection for as long as it streams or long-polls: a
websocket, an SSE channel, a Trigger.dev stream, a Trigger.dev long-poll.
They are counted together, per user (``max_connections_per_user``) and per
process (``max_connections``), so neither limit depends on which protocol a
client speaks. The two stacks used to count apart: a user could hold 64
websocket channels and 64 Trigger.dev feeds at once, and the per-process cap
never applied to Trigger.dev feeds.

Beyond a limit the connection is refused with 429 and ``Retry-After`` (4429
on a websocket); once the server is shutting down, with 503 (1001).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sessionstream.core.errors import RateLimited, SessionStreamError
from sessionstream.server.realtime_stats import RealtimeStats

#: how long a refused client should wait before it tries again
RETRY_AFTER_S = 1.0


class TooManyConnections(RateLimited):
    code = "too_many_connections"


class ShuttingDown(SessionStreamError):
    status = 503
    code = "shutting_down"


class Admission:
    """Admits a connection if its user and the process are under their limits."""

    def __init__(self, stats: RealtimeStats, *, per_user: int, per_process: int) -> None:
        self.stats = stats
        self.per_user = per_user
        self.per_process = per_process
        self.closing = False

    @contextlib.contextmanager
    def admit(
        self, user_id: str, channel: str, transport: str, *, resumed: bool = False
    ) -> Iterator[None]:
        """Hold one connection of ``user_id`` for the ``with`` block, or refuse it."""
        stats = self.stats
        if self.closing:
            raise ShuttingDown("the server is shutting down; reconnect to another node")
        if stats.connections >= self.per_process:
            raise TooManyConnections(
                f"the server holds its maximum of {self.per_process} realtime connections",
                retry_after=RETRY_AFTER_S,
            )
        if stats.by_user.get(user_id, 0) >= self.per_user:
            raise TooManyConnections(
                f"at most {self.per_user} realtime connections per user",
                retry_after=RETRY_AFTER_S,
            )
        slot = (channel, transport)
        stats.by_user[user_id] = stats.by_user.get(user_id, 0) + 1
        stats.open[slot] = stats.open.get(slot, 0) + 1
        stats.opened[slot] = stats.opened.get(slot, 0) + 1
        stats.resumed += int(resumed)
        try:
            yield
        finally:
            stats.open[slot] -= 1
            left = stats.by_user[user_id] - 1
            if left:
                stats.by_user[user_id] = left
            else:
                del stats.by_user[user_id]
