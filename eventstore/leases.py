"""Run ownership leases: which node executes which run, until when.

With several nodes on one database a run is owned by the node that started
it for as long as that node keeps renewing a lease on it. When a node dies
its leases expire, and any other node's recovery loop ends the runs as
``run.failed`` (``interrupted``), which frees their sessions. Expiry is judged
by the database clock, so nodes need not agree on the time.

A lease is also a fence. Every take of a lease -- a run starting, another
node taking an orphan over, a cancel -- draws a new epoch from one database
sequence, and every write of a run carries the epoch its writer took
(``Fence``): the store writes it only while that is still the run's lease
epoch (``eventstore/postgres/writer.py``). So a node that lost its lease
(paused, cut off, merely slow) can write nothing more for that run: not
because its expected version happens to be stale, but because its epoch is.
The expected-version guard stays under it.

The lease also bounds how long any node may hold the log's head lock
(:func:`lock_bounds`): well under a lease, so a paused node can never delay
the takeover of its own runs by others.

The single-node SQLite store has no leases: one server holds the file
(``eventstore/sqlite/files.py``), so every run in it is that server's, and
recovery at start-up is enough. A process that does not hold the file while
another does (a second app in one process, a tool) is a :class:`RunOwner`
that says no, and recovers nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class LockBounds:
    """How long the head lock may be held or waited for, derived from the lease TTL."""

    #: a transaction holding it idle (a rebuild or import on a paused or cut-off node) is
    #: ended after this
    held_idle_s: float
    #: any other transaction left idle (a paused node's) is ended after this
    idle_s: float
    #: one writer statement (the write, or a wait for the lock) is cancelled after this
    statement_s: float
    #: a writer's reservation of the next write lapses after this if it never writes
    reserve_s: float


def lock_bounds(lease_ttl_s: float) -> LockBounds:
    """Every bound on the head lock under a lease: a stalled holder is gone before its
    runs' leases expire, so takeovers (1.25 TTL at most) never wait for it."""
    return LockBounds(
        held_idle_s=lease_ttl_s / 2,
        idle_s=lease_ttl_s,
        statement_s=lease_ttl_s / 2,
        reserve_s=min(lease_ttl_s / 8, 1.0),
    )


@runtime_checkable
class LeaseStore(Protocol):
    """What a store shared by several nodes offers the run manager."""

    async def acquire_lease(self, run_id: str, node_id: str, ttl_s: float) -> int:
        """Take (or take over) the lease on a run until ``now + ttl_s``; returns its new
        epoch, which fences off every earlier holder's writes."""
        ...

    async def renew_leases(self, leases: Mapping[str, int], node_id: str, ttl_s: float) -> None:
        """Extend this node's leases (run id -> the epoch it took); one round trip. A lease
        taken over since is not this node's any more and is left alone."""
        ...

    async def release_lease(self, run_id: str, epoch: int) -> None:
        """Drop the lease of a run that ended, if it is still at this epoch."""
        ...

    async def expired_leases(self, runs: Mapping[str, str | None], grace_s: float) -> set[str]:
        """The runs nobody owns any more.

        ``runs`` maps run ids to their last activity (RFC 3339, the run
        document's ``updated_at``). A run is orphaned when its lease expired,
        or when it has no lease and was last active more than ``grace_s`` ago
        (a run is claimed a moment before its node takes the lease).
        """
        ...


@runtime_checkable
class RunOwner(Protocol):
    """A store without leases that knows whether its unended runs are this process's."""

    def owns_runs(self) -> bool:
        """False while another process serves the store: its runs are alive there."""
        ...
