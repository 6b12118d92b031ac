"""A batch written again after storage refused it: never twice, never answered as a retry.

The writer writes a batch that storage refused for now (a failover) again,
the same requests with the same event ids (``store.py`` waits for storage).
When the connection was lost while the first try's commit was in flight,
that commit may have landed: the second try then finds those ids stored
and writes nothing (rule 2 of ``eventstore/batch.py``), so nothing is
written twice. It must still answer as the write it was, not as a client's
idempotent retry: a claim answered as a retry starts no run, and its
session would stay busy. So the plans the writer sent for the batch are
kept (:class:`SentPlans`), and an "already stored" whose records are
exactly what was sent (id, position and hash, which covers the request's
metadata) is answered as fresh.

Whatever is answered as stored, own commit or a client's retry, is first
made durable (:func:`durable_head`, which the event pump uses too: it
publishes no other node's commit before it is durable): a commit whose wait for the synchronous
standby was cut short (a cancel, a terminated connection, a shutdown: often
just what lost the answer) is visible on the primary before the standby has
it, and a failover would take it back after it was acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from sessionstream.eventstore.batch import BatchPlan
from sessionstream.eventstore.groupcommit import Outcome
from sessionstream.eventstore.model import AppendResult
from sessionstream.eventstore.postgres import schema as sql


class SentPlans:
    """The plans whose write statement the writer sent for the batch in hand."""

    def __init__(self) -> None:
        self._plans: list[BatchPlan] = []
        #: "already stored" answers found to be the writer's own lost commit
        self.own_commits_found = 0
        #: a write statement of the batch lost its answer: its commit may have landed
        self.lost = False

    def record(self, plan: BatchPlan) -> None:
        self._plans.append(plan)

    def clear(self) -> None:
        self._plans.clear()
        self.lost = False

    def own(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Each "already stored" answer whose records were sent by this writer, as fresh."""
        mine = {r.event_id: (r.position, r.hash) for plan in self._plans for r in plan.records}
        fixed: list[Outcome] = []
        for outcome in outcomes:
            if not isinstance(outcome, BaseException) and any(r.duplicate for r in outcome):
                results = []
                for r in outcome:
                    if r.duplicate and all(
                        mine.get(e.event_id) == (e.position, e.hash) for e in r.events
                    ):
                        self.own_commits_found += 1
                        r = AppendResult(r.stream_id, r.events, r.events[-1].version)
                    results.append(r)
                outcome = results
            fixed.append(outcome)
        return fixed


def any_stored(outcomes: Sequence[Outcome]) -> bool:
    """Whether an answer says "already stored" (found, not written by this batch)."""
    return any(not isinstance(o, BaseException) and any(r.duplicate for r in o) for o in outcomes)


async def durable_head(conn: asyncpg.Connection) -> int:
    """The head, returned once everything ``conn``'s host committed up to it is on its
    synchronous standby (at once on a standby, or with no synchronous standby named).

    A commit whose wait for the standby was cut short is visible before it is
    durable; a later commit that does wait (``schema.DURABLE``) returns only once the
    standby holds the log up to it, and so up to everything visible before it."""
    head, waits = await conn.fetchrow(sql.HEAD_AND_SYNC)
    if waits:
        await conn.execute(sql.DURABLE)  # autocommit: its commit waits for the standby
    return int(head)
