"""The per-user storage quota: a write that would pass it is refused before it is appended.

What a user has stored is the ``usage`` read model (``projections/usage.py``),
folded in the same transaction as the events it counts. A command that
writes what a client sent holds its user's ``Room`` while it decides and
appends: the room reads the usage once, and ``check`` refuses (413
``quota_exceeded``) any append whose user's events would take it past the
limit, so nothing of it is written. Rooms of one user are taken one at a
time in a process, so two writes cannot both fit in the same last megabyte;
on PostgreSQL with several nodes, each node may let one write through at
the edge (an overshoot of at most one request body per node).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Final

from sessionstream.core.errors import QuotaExceeded
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import AppendRequest, stored_bytes
from sessionstream.projections.usage import user_of

KIND: Final = "usage"


class Room:
    """One user's usage as read under the user's lock, and the check an append passes."""

    __slots__ = ("limit", "used", "user_id")

    def __init__(self, user_id: str, used: int, limit: int) -> None:
        self.user_id = user_id
        self.used = used
        self.limit = limit

    def check(self, requests: Sequence[AppendRequest]) -> None:
        """Raise ``QuotaExceeded`` if the user's events in ``requests`` do not fit."""
        if self.limit <= 0:
            return
        needed = sum(
            stored_bytes(event)
            for request in requests
            for event in request.events
            if user_of(event.metadata) == self.user_id
        )
        if self.used + needed > self.limit:
            raise QuotaExceeded(
                f"this write needs {needed} bytes and {self.used} of the {self.limit} bytes "
                "this user may store are used",
                details={"used": self.used, "needed": needed, "quota": self.limit},
            )


class Quota:
    """Hands out each user's ``Room``, one at a time per user."""

    def __init__(self, store: EventStore, limit_bytes: int) -> None:
        self.store = store
        self.limit = limit_bytes
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: dict[str, int] = {}

    async def used(self, user_id: str) -> int:
        doc = await self.store.get_doc(KIND, user_id)
        return int(doc.body["bytes"]) if doc is not None else 0

    @contextlib.asynccontextmanager
    async def room(self, user_id: str) -> AsyncIterator[Room]:
        """The user's room, held until the block ends; append inside it."""
        if self.limit <= 0:
            yield Room(user_id, 0, 0)
            return
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        self._holders[user_id] = self._holders.get(user_id, 0) + 1
        try:
            async with lock:
                yield Room(user_id, await self.used(user_id), self.limit)
        finally:
            self._holders[user_id] -= 1
            if not self._holders[user_id]:  # no one holds or waits: forget the lock
                del self._holders[user_id]
                del self._locks[user_id]
