"""Run ownership leases: which node executes which run, until when.

With several nodes on one database a run is owned by the node that started
it for as long as that node keeps renewing a lease on it. When a node dies
its leases expire, and any other node's recovery loop ends the runs as
``run.failed`` (``interrupted``), which frees their sessions. Expiry is judged
by the database clock, so nodes need not agree on the time.

A lease is advisory: correctness never depends on it, because a run's writer
appends with an expected version. A node that lost its lease while merely
slow finds the run's terminal event in its way and stops.

The single-node SQLite store has no leases: one server holds the file
(``eventstore/sqlite/files.py``), so every run in it is that server's, and
recovery at start-up is enough. A process that does not hold the file while
another does (a second app in one process, a tool) is a :class:`RunOwner`
that says no, and recovers nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class LeaseStore(Protocol):
    """What a store shared by several nodes offers the run manager."""

    async def acquire_lease(self, run_id: str, node_id: str, ttl_s: float) -> None:
        """Take (or take over) the lease on a run until ``now + ttl_s``."""
        ...

    async def renew_leases(self, run_ids: Sequence[str], node_id: str, ttl_s: float) -> None:
        """Extend this node's leases; one round trip for all of them."""
        ...

    async def release_lease(self, run_id: str) -> None:
        """Drop the lease of a run that ended."""
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
