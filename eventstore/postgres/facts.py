"""What the database holds for one batch, read in one statement without any lock.

One statement reads one snapshot, so every fact it returns is as of the head
it returns; a plan that must ask again (a document a projection keys
differently once recorded) reads again, and if that read sees another head
the facts are of two times: ``Moved``, and the writer plans again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import asyncpg

from sessionstream.eventstore.batch import StreamHead, Unknown, storable
from sessionstream.eventstore.model import Doc, RecordedEvent, row_to_doc, row_to_event
from sessionstream.eventstore.postgres import schema as sql
from sessionstream.eventstore.postgres.packs import packed_among
from sessionstream.eventstore.snapshots import Ident, Series


class Moved(Exception):
    """A later read of one plan's facts saw another head: the facts are of two times."""


@dataclass(slots=True)
class Facts:
    """What the database holds for one batch, read under the head lock."""

    head: int = 0
    #: the log's newest recorded_at (None: no event yet)
    newest: str | None = None
    events: dict[str, RecordedEvent] = field(default_factory=dict)
    streams: dict[str, StreamHead] = field(default_factory=dict)
    docs: dict[Ident, Doc] = field(default_factory=dict)
    snapshots: dict[Series, int] = field(default_factory=dict)
    asked_docs: set[Ident] = field(default_factory=set)
    asked_snapshots: set[Series] = field(default_factory=set)
    #: run id -> its lease's current epoch (absent: no lease)
    epochs: dict[str, int] = field(default_factory=dict)
    #: the head of the first read; every later read must see it too
    base: int | None = None

    def doc(self, kind: str, key: str) -> Doc | None:
        if (kind, key) not in self.asked_docs:
            raise Unknown("doc", (kind, key))
        return self.docs.get((kind, key))

    def last_snapshot(self, stream_id: str, kind: str) -> int:
        if (stream_id, kind) not in self.asked_snapshots:
            raise Unknown("snapshot", (stream_id, kind))
        return self.snapshots.get((stream_id, kind), 0)

    async def read(
        self,
        conn: asyncpg.Connection,
        ids: Iterable[str] = (),
        streams: Iterable[str] = (),
        docs: Iterable[Ident] = (),
        series: Iterable[Series] = (),
        runs: Iterable[str] = (),
        targets: Mapping[str, str] | None = None,
    ) -> None:
        """Read these rows in one round trip (and the head); ``Moved`` if the head is not
        the first read's. ``targets``: the run each id's request appends to, whose packs
        a retry's missing ids are looked up in (``compaction.runs_to_unpack``)."""
        ids, docs, series = list(ids), set(docs), set(series)
        # text PostgreSQL cannot take cannot be stored either: asked, and absent
        keys = sorted(d for d in docs if storable(d[1]))
        marks = sorted(m for m in series if storable(m[0]))
        row = await conn.fetchrow(
            sql.READ_BATCH_STATE,
            ids,
            list(streams),
            [k[0] for k in keys],
            [k[1] for k in keys],
            [m[0] for m in marks],
            [m[1] for m in marks],
            sorted(r for r in runs if storable(r)),
        )
        assert row is not None
        self.head = int(row["head"])
        if self.base is None:
            self.base = self.head
        elif self.head != self.base:
            raise Moved
        for lease_row in row["leases"] or ():
            self.epochs[lease_row[0]] = int(lease_row[1])
        self.newest = row["newest"]
        found: dict[str, RecordedEvent] = {}
        for event_row in row["events"] or ():
            event = row_to_event(event_row)
            found[event.event_id] = event
        # a retried run ending or claim: its other events may be packed
        await packed_among(conn, ids, found, targets)
        self.events.update(found)
        for stream_row in row["streams"] or ():
            self.streams[stream_row[0]] = StreamHead(stream_row[1], stream_row[2])
        for doc_row in row["docs"] or ():
            doc = row_to_doc(doc_row)
            self.docs[(doc.kind, doc.key)] = doc
        for snap_row in row["snapshots"] or ():
            self.snapshots[(snap_row[0], snap_row[1])] = snap_row[2]
        self.asked_docs.update(docs)
        self.asked_snapshots.update(series)

    async def answer(self, conn: asyncpg.Connection, unknown: Unknown) -> None:
        if unknown.what == "doc":
            await self.read(conn, docs=[unknown.ident])
        elif unknown.what == "snapshot":
            await self.read(conn, series=[unknown.ident])
        else:  # event ids: the planner asks only when it plans optimistic (the caller reads)
            raise AssertionError(f"unexpected question {unknown.what}")
