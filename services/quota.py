"""The per-user storage quota: a write that would pass it is refused before it is appended.

What a user has stored is the ``usage`` read model (``projections/usage.py``),
folded in the same transaction as the events it counts. A command that
writes what a client sent takes its user's ``Room`` while it decides and
appends; ``check`` refuses (413 ``quota_exceeded``) any append whose user's
events would take it past the limit, so nothing of it is written.

The room reads the usage under the user's lock and ``check`` reserves what
the append needs, then lets the lock go: the next write of the same user
counts that reservation, and the appends themselves run side by side and
commit in one batch. (Holding the lock until the commit made a user's writes
wait for each other's fsync: PATCH throughput halved, docs/explanation/append-path.md.)
A reservation is dropped when its room closes, after its append committed
or failed. The reservations are read before the usage document: an append
that commits and drops its reservation in between is then in the document.
Counted twice for a moment, at worst (an early 413 at the very edge), never
missed, so two writes cannot both fit in the same last megabyte in one
process; on PostgreSQL with several nodes, each node may let one write
through at the edge (an overshoot of at most one request body per node).
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

    __slots__ = ("_quota", "limit", "reserved", "used", "user_id")

    def __init__(self, user_id: str, used: int, limit: int, quota: Quota | None = None) -> None:
        self.user_id = user_id
        #: the usage stored and reserved by others when the room was taken
        self.used = used
        self.limit = limit
        #: what this room's append is counted for until the room closes
        self.reserved = 0
        self._quota = quota

    def check(self, requests: Sequence[AppendRequest]) -> None:
        """Raise ``QuotaExceeded`` if the user's events in ``requests`` do not fit; else
        reserve them (a retry after a conflict replaces the reservation) and let the
        user's next write in."""
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
        if self._quota is not None:
            self._quota._reserve(self, needed)


class Quota:
    """Hands out each user's ``Room``; reads and checks of one user take turns."""

    def __init__(self, store: EventStore, limit_bytes: int) -> None:
        self.store = store
        self.limit = limit_bytes
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: dict[str, int] = {}
        #: bytes reserved by rooms of each user whose appends have not finished
        self._reserved: dict[str, int] = {}
        #: the rooms that hold their user's lock (until their check or their end)
        self._locked: set[int] = set()

    async def used(self, user_id: str) -> int:
        doc = await self.store.get_doc(KIND, user_id)
        return int(doc.body["bytes"]) if doc is not None else 0

    @contextlib.asynccontextmanager
    async def room(self, user_id: str) -> AsyncIterator[Room]:
        """The user's room, until the block ends; append inside it."""
        if self.limit <= 0:
            yield Room(user_id, 0, 0)
            return
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        self._holders[user_id] = self._holders.get(user_id, 0) + 1
        room = Room(user_id, 0, self.limit, self)
        try:
            await lock.acquire()
            self._locked.add(id(room))
            reserved = self._reserved.get(user_id, 0)  # first: see the module's docstring
            room.used = await self.used(user_id) + reserved
            yield room
        finally:
            self._unlock(room)
            if room.reserved:
                left = self._reserved[user_id] - room.reserved
                if left:
                    self._reserved[user_id] = left
                else:
                    del self._reserved[user_id]
            self._holders[user_id] -= 1
            if not self._holders[user_id]:  # no one holds or waits: forget the lock
                del self._holders[user_id]
                del self._locks[user_id]

    def _reserve(self, room: Room, needed: int) -> None:
        user_id = room.user_id
        self._reserved[user_id] = self._reserved.get(user_id, 0) - room.reserved + needed
        room.reserved = needed
        self._unlock(room)

    def _unlock(self, room: Room) -> None:
        if id(room) in self._locked:
            self._locked.discard(id(room))
            self._locks[room.user_id].release()
