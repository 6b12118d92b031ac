"""Applying pure projections to events inside a backend's transaction.

The batch planner (``eventstore/batch.py``) calls :class:`BatchProjector` for
the events of each caller's group; it folds them into read-model documents
through the projections' pure ``apply`` and hands back the documents to
upsert. Rebuilds and imports fold recorded events with :class:`Refold`.
Keeping this here (not in a backend) means SQLite and PostgreSQL fold
identically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from sessionstream.eventstore.model import Doc, DocIndex, RecordedEvent
from sessionstream.eventstore.snapshots import (
    LastSnapshot,
    Marks,
    Snapshot,
    SnapshotPolicy,
    no_snapshots_yet,
)


class Projection(Protocol):
    """A pure fold from events to one kind of read-model document."""

    kind: str
    version: int
    #: whether its documents are also kept as snapshots (``eventstore/snapshots.py``)
    snapshots: bool

    def key(self, event: RecordedEvent) -> str | None:
        """The document this event changes, or None when it is not ours."""
        ...

    def apply(self, state: dict[str, Any] | None, event: RecordedEvent) -> dict[str, Any] | None:
        """Fold one event; must not mutate ``state``."""
        ...

    def index(self, state: dict[str, Any]) -> DocIndex: ...


DocLoader = Callable[[str, str], Doc | None]


def no_docs_yet(kind: str, key: str) -> Doc | None:
    """A ``DocLoader`` for empty read-model tables (a rebuild)."""
    return None


def interested(projections: Sequence[Projection], stream_id: str) -> tuple[Projection, ...]:
    """The projections that may key an event of ``stream_id``.

    A projection of one stream family names its ``prefix``; asking it of
    every event of another stream was a tenth of a bulk append's CPU.
    Projections without one are asked of every event.
    """
    return tuple(
        p
        for p in projections
        if not isinstance(prefix := getattr(p, "prefix", None), str) or stream_id.startswith(prefix)
    )


class BatchProjector:
    """Folds events into documents, with an overlay so a failed request leaves nothing."""

    def __init__(self, projections: Sequence[Projection], load: DocLoader) -> None:
        self._projections = tuple(projections)
        self._load = load
        self._committed: dict[tuple[str, str], Doc] = {}

    def project(self, events: Iterable[RecordedEvent]) -> dict[tuple[str, str], Doc]:
        """Fold ``events`` and return the documents they changed (not yet kept)."""
        changed: dict[tuple[str, str], Doc] = {}
        stream_id, interested_in = None, self._projections
        for event in events:
            if event.stream_id != stream_id:  # a batch holds runs of one stream's events
                stream_id = event.stream_id
                interested_in = interested(self._projections, stream_id)
            for projection in interested_in:
                key = projection.key(event)
                if key is None:
                    continue
                ident = (projection.kind, key)
                current = changed.get(ident) or self._committed.get(ident) or self._load(*ident)
                state = projection.apply(current.body if current else None, event)
                if state is None:
                    continue
                changed[ident] = Doc(
                    kind=projection.kind,
                    key=key,
                    body=state,
                    version=event.version,
                    position=event.position,
                    index=projection.index(state),
                )
        return changed

    def keep(self, docs: Mapping[tuple[str, str], Doc]) -> None:
        """Make a successful request's documents visible to later requests of the batch."""
        self._committed.update(docs)

    @property
    def documents(self) -> list[Doc]:
        return list(self._committed.values())


class Refold:
    """Recorded events folded a page at a time: the documents and snapshots to write.

    Rebuilds and imports take snapshots after every event, where a live
    append of one event at a time would have taken them.
    """

    def __init__(
        self,
        projections: Sequence[Projection],
        snapshot_every: int,
        *,
        load: DocLoader = no_docs_yet,
        last_snapshot: LastSnapshot = no_snapshots_yet,
    ) -> None:
        self.projector = BatchProjector(projections, load)
        self._policy = SnapshotPolicy(projections, snapshot_every)
        self._marks = Marks(last_snapshot)

    def page(self, events: Iterable[RecordedEvent]) -> tuple[list[Doc], list[Snapshot]]:
        """Each document the page changed (once, as it ends) and the snapshots due."""
        changed: dict[tuple[str, str], Doc] = {}
        snapshots: list[Snapshot] = []
        for event in events:
            docs = self.projector.project((event,))
            self.projector.keep(docs)
            changed.update(docs)
            due = self._policy.due((event,), docs, self._marks)
            self._marks.taken(due)
            snapshots.extend(due)
        return list(changed.values()), snapshots


def fold(
    projection: Projection, events: Iterable[RecordedEvent], state: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Fold events in one go: the reference every other path must agree with."""
    for event in events:
        if projection.key(event) is not None:
            state = projection.apply(state, event) or state
    return state
