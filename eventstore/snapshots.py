"""When a folded document is also kept as a snapshot, decided once for every path.

A snapshot is an optimisation only (ARCHITECTURE.md): the state of one
document as of a version of the stream it is folded from, so time travel
(``SessionService.as_of``) folds at most ``every`` events past it instead of
the whole history. Which documents qualify is a property of their projection
(``Projection.snapshots``), never a kind a backend names; how often is the
store's ``snapshot_every``.

The rule: after a caller's group of requests (or, in a rebuild or an import,
after each event), a document of a snapshotting projection is snapshotted when
its stream's version is at least ``every`` past the newest snapshot of it.
Both backends' live appends, rebuilds and imports ask :class:`SnapshotPolicy`,
so they take snapshots at the same versions. Pure: the newest stored snapshot
comes in through a callback the backend supplies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sessionstream.eventstore.model import Doc, RecordedEvent

if TYPE_CHECKING:
    from sessionstream.eventstore.projector import Projection

#: (kind, key) of a read-model document
Ident = tuple[str, str]
#: (stream id, kind) of a snapshot series
Series = tuple[str, str]
#: the version of the newest stored snapshot of a series, 0 if there is none
LastSnapshot = Callable[[str, str], int]


def no_snapshots_yet(stream_id: str, kind: str) -> int:
    """A ``LastSnapshot`` for an empty snapshot table (a rebuild, a test)."""
    return 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One document's state as of ``version`` of ``stream_id`` (at log ``position``)."""

    stream_id: str
    kind: str
    version: int
    position: int
    state: dict[str, Any]

    @property
    def series(self) -> Series:
        return (self.stream_id, self.kind)


class SnapshotPolicy:
    """Decides which folded documents are due a snapshot."""

    def __init__(self, projections: Sequence[Projection], every: int) -> None:
        self.every = every
        #: only projections that snapshot, and none when snapshots are off
        self._projections = tuple(p for p in projections if p.snapshots) if every > 0 else ()

    @property
    def enabled(self) -> bool:
        return bool(self._projections)

    def series(self, events: Iterable[RecordedEvent]) -> set[Series]:
        """The snapshot series these events may extend (what a backend prefetches)."""
        found: set[Series] = set()
        for event in events:
            for projection in self._projections:
                if projection.key(event) is not None:
                    found.add((event.stream_id, projection.kind))
        return found

    def due(
        self,
        events: Sequence[RecordedEvent],
        docs: Mapping[Ident, Doc],
        last: LastSnapshot,
    ) -> list[Snapshot]:
        """Snapshots of ``docs`` (just folded from ``events``) that are due.

        A document's stream is the stream of the last event keyed to it: a
        snapshotting projection folds each document from one stream, and its
        version counts that stream's events.
        """
        if not self._projections or not docs:
            return []
        streams: dict[Ident, str] = {}
        for event in events:
            for projection in self._projections:
                key = projection.key(event)
                if key is not None:
                    streams[(projection.kind, key)] = event.stream_id
        snapshots = []
        every = self.every
        for ident, stream_id in streams.items():
            doc = docs.get(ident)
            # below ``every`` none can be due (a mark is never negative): no lookup,
            # which spared a young session's PATCH one statement per append
            if (
                doc is not None
                and doc.version >= every
                and doc.version - last(stream_id, doc.kind) >= every
            ):
                snapshots.append(Snapshot(stream_id, doc.kind, doc.version, doc.position, doc.body))
        return snapshots


class Marks:
    """The newest snapshot version per series: those taken here over those stored.

    Wraps a backend's :data:`LastSnapshot` so each series is read at most once
    per batch (or rebuild) and snapshots taken since count.
    """

    def __init__(self, stored: LastSnapshot) -> None:
        self._stored = stored
        self._marks: dict[Series, int] = {}

    def __call__(self, stream_id: str, kind: str) -> int:
        mark = self._marks.get((stream_id, kind))
        if mark is None:
            mark = self._marks[(stream_id, kind)] = self._stored(stream_id, kind)
        return mark

    def taken(self, snapshots: Iterable[Snapshot]) -> None:
        for snapshot in snapshots:
            self._marks[snapshot.series] = snapshot.version
