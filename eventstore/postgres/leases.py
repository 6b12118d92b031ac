"""The run leases on PostgreSQL: one row a run, and an epoch that fences its writes.

Every take of a lease (a run's start, a takeover, a cancel) draws a new epoch
from a sequence; a renewal or a release acts only at the taker's own epoch, so
a node that lost a lease can neither extend nor drop its successor's. The
writer checks the epoch again inside the statement that appends
(``eventstore/postgres/writer.py``); the rules are in ``eventstore/leases.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

from sessionstream.eventstore.postgres.reader import PostgresReader


class PostgresLeases:
    """The store's lease methods (``EventStore``'s), on the reader's pool."""

    _reader: PostgresReader

    async def acquire_lease(self, run_id: str, node_id: str, ttl_s: float) -> int:
        rows = await self._reader.fetch(
            "INSERT INTO leases (run_id, node_id, expires_at) "
            "VALUES ($1, $2, now() + make_interval(secs => $3)) "
            "ON CONFLICT (run_id) DO UPDATE SET node_id = excluded.node_id, "
            "expires_at = excluded.expires_at, epoch = nextval('lease_epochs') "
            "RETURNING epoch",
            run_id,
            node_id,
            ttl_s,
        )
        return int(rows[0][0])

    async def renew_leases(self, leases: Mapping[str, int], node_id: str, ttl_s: float) -> None:
        if not leases:
            return
        await self._reader.fetch(
            "UPDATE leases l SET expires_at = now() + make_interval(secs => $4) "
            "FROM unnest($1::text[], $2::bigint[]) AS r(run_id, epoch) "
            "WHERE l.run_id = r.run_id AND l.epoch = r.epoch AND l.node_id = $3",
            list(leases),
            list(leases.values()),
            node_id,
            ttl_s,
        )

    async def release_lease(self, run_id: str, epoch: int) -> None:
        await self._reader.fetch(
            "DELETE FROM leases WHERE run_id = $1 AND epoch = $2", run_id, epoch
        )

    async def expired_leases(self, runs: Mapping[str, str | None], grace_s: float) -> set[str]:
        if not runs:
            return set()
        ids = list(runs)
        rows = await self._reader.fetch(
            "SELECT r.run_id FROM unnest($1::text[], $2::text[]) AS r(run_id, active_at) "
            "LEFT JOIN leases l ON l.run_id = r.run_id "
            "WHERE CASE WHEN l.run_id IS NULL "
            "THEN r.active_at IS NULL "
            "OR r.active_at::timestamptz < now() - make_interval(secs => $3) "
            "ELSE l.expires_at <= now() END",
            ids,
            [runs[i] for i in ids],
            grace_s,
        )
        return {r[0] for r in rows}

    async def lease_holders(self) -> dict[str, str]:
        """run id -> node id of every live lease (operators and tests)."""
        rows = await self._reader.fetch(
            "SELECT run_id, node_id FROM leases WHERE expires_at > now()"
        )
        return {r[0]: r[1] for r in rows}
