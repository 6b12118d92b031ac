"""What the writer knows the database holds, as of the log head it last saw.

A single append on PostgreSQL took four round trips (lock the head, read the
batch's facts, write, commit), and on a loaded machine each round trip waits
for the server process to be scheduled: single appends ran at 0.6-0.7x the
``eventsourcing`` recorder's (issue 21). But between two batches of the same
writer nothing changes unless the head moves: every append, on every node,
moves it. So the writer keeps what it read and wrote -- stream heads,
documents, snapshot marks, the head and the newest time -- and plans the next
batch on them with no read at all. The plan is written by one server-side
function in one statement (``write_batch_at_head``, its own transaction: one
round trip, commit included) that locks the head and writes only if the head
is still the one planned on. If it moved (another node wrote, an import), or
the plan needs a fact not known here, or the database refuses the write (a
retried event id the optimistic plan did not look up), the batch takes the
sure path, which reads everything under the lock.

A rebuild rewrites documents without moving the head; it refolds the same
events into the same documents, and a rebuild in this process forgets
everything here anyway (``PostgresWriter.forget``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sessionstream.eventstore.batch import NO_HEAD, BatchPlan, StreamHead, Unknown
from sessionstream.eventstore.model import Doc
from sessionstream.eventstore.snapshots import Ident, Series

#: facts kept at most; past it everything is forgotten (and read again as needed)
LIMIT = 20_000


class Known:
    """Facts as of ``head``; ``head is None``: nothing is known."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.head: int | None = None
        self.newest: str | None = None
        #: a stream known absent maps to ``NO_HEAD``
        self.streams: dict[str, StreamHead] = {}
        #: a document known absent maps to None
        self.docs: dict[Ident, Doc | None] = {}
        #: the last snapshot's version of a series (0: none)
        self.marks: dict[Series, int] = {}

    def forget(self) -> None:
        self.head = self.newest = None
        self.streams.clear()
        self.docs.clear()
        self.marks.clear()

    def covers(self, streams: Iterable[str]) -> bool:
        """Whether a batch on these streams can be planned without reading."""
        return self.head is not None and all(s in self.streams for s in streams)

    # the planner's loaders: a fact not known here sends the batch down the sure path
    def doc(self, kind: str, key: str) -> Doc | None:
        try:
            return self.docs[(kind, key)]
        except KeyError:
            raise Unknown("doc", (kind, key)) from None

    def last_snapshot(self, stream_id: str, kind: str) -> int:
        try:
            return self.marks[(stream_id, kind)]
        except KeyError:
            raise Unknown("snapshot", (stream_id, kind)) from None

    # learning ------------------------------------------------------------------------
    def read(
        self,
        head: int,
        newest: str | None,
        streams: tuple[Sequence[str], dict[str, StreamHead]],
        docs: tuple[Iterable[Ident], dict[Ident, Doc]],
        marks: tuple[Iterable[Series], dict[Series, int]],
    ) -> None:
        """What a read under the lock found: (asked, found) for each kind of fact."""
        if head != self.head:  # what was known is of another time
            self.forget()
        if len(self.streams) + len(self.docs) + len(self.marks) > self.limit:
            self.forget()
        self.head, self.newest = head, newest
        asked_streams, found_streams = streams
        for stream_id in asked_streams:
            self.streams[stream_id] = found_streams.get(stream_id, NO_HEAD)
        asked_docs, found_docs = docs
        for ident in asked_docs:
            self.docs[ident] = found_docs.get(ident)
        asked_marks, found_marks = marks
        for series in asked_marks:
            self.marks[series] = found_marks.get(series, 0)

    def wrote(self, plan: BatchPlan) -> None:
        """A batch planned on these facts committed: they are now as it left them."""
        if not plan.records:
            return
        self.head = plan.head
        self.newest = plan.records[-1].recorded_at
        self.streams.update(plan.streams)
        for doc in plan.docs:
            self.docs[(doc.kind, doc.key)] = doc
        for snapshot in plan.snapshots:
            series = (snapshot.stream_id, snapshot.kind)
            self.marks[series] = max(self.marks.get(series, 0), snapshot.version)
