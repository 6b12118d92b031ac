"""Applying pure projections to events inside a backend's transaction.

The batch planner (``eventstore/batch.py``) calls :class:`BatchProjector` for
the events of each caller's group; it folds them into read-model documents
through the projections' pure ``apply`` and hands back the documents to
upsert. Imports fold recorded events with :class:`Refold`, a chunk at a
time; rebuilds and ``verify`` fold the whole log stream by stream with
:class:`StreamFold`, so they hold one stream's documents, not every one.
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


def per_stream(projection: Projection) -> bool:
    """Whether every document of ``projection`` is folded from one stream's events only.

    A projection says so with ``per_stream = True`` and a ``prefix``: its document
    key is the stream id after the prefix (``projections/streams.py``). Others
    (tokens, keyed by a hash inside the event) are folded in log order instead.
    """
    return getattr(projection, "per_stream", False) is True and isinstance(
        getattr(projection, "prefix", None), str
    )


def stream_of(projection: Projection, key: str) -> str:
    """The stream a per-stream projection folds document ``key`` from."""
    return f"{getattr(projection, 'prefix', '')}{key}"


def keeps_every_doc(projection: Projection) -> bool:
    """False for a per-stream projection that keeps no row for some documents
    (``DocIndex.kept``): those are folded from their stream when read."""
    return not per_stream(projection) or getattr(projection, "keeps_every_doc", True) is not False


def unkept_fold(projection: Projection, key: str, events: Sequence[RecordedEvent]) -> Doc | None:
    """Document ``key`` folded from its stream's events, when it is one the store does not
    keep; None otherwise (a document that should be kept and is not is missing: ``verify``
    says so, a read must not hide it)."""
    doc = BatchProjector((projection,), no_docs_yet).project(events).get((projection.kind, key))
    return doc if doc is not None and not doc.index.kept else None


class StreamFold:
    """The whole log folded stream by stream: what a rebuild writes, what verify compares.

    Fed events in (stream id, version) order (``EventStore.read_by_stream``), a
    document of a per-stream projection is complete once its stream ends, so only
    the current stream's documents are held however long the log: a rebuild of
    10^6 events used to hold every document until its end. The few events a
    projection keyed otherwise folds (token issues and revocations) are kept
    aside and folded last, in log order, as a live append would have.
    Snapshots are taken where a rebuild takes them (after every event).
    """

    def __init__(
        self, projections: Sequence[Projection], snapshot_every: int = 0, *, hold: bool = True
    ) -> None:
        self._streamed = tuple(p for p in projections if per_stream(p))
        #: with ``hold`` False the caller folds these itself, in log order
        self._across = tuple(p for p in projections if not per_stream(p)) if hold else ()
        self._every = snapshot_every
        self._stream: str | None = None
        self._refold: Refold | None = None
        self._held: list[RecordedEvent] = []

    def feed(self, events: Iterable[RecordedEvent]) -> tuple[list[Doc], list[Snapshot]]:
        """Fold a page: the documents of the streams that ended in it, and the snapshots due."""
        done: list[Doc] = []
        snapshots: list[Snapshot] = []
        run: list[RecordedEvent] = []
        across = self._across
        for event in events:
            if event.stream_id != self._stream:
                snapshots.extend(self._fold(run))
                run = []
                done.extend(self._close())
                self._stream = event.stream_id
                self._refold = Refold(self._streamed, self._every)
            run.append(event)
            if across and any(p.key(event) is not None for p in across):
                self._held.append(event)
        snapshots.extend(self._fold(run))
        return done, snapshots

    def finish(self) -> tuple[list[Doc], list[Snapshot]]:
        """The last stream's documents, then those of the projections folded in log order."""
        docs = self._close()
        self._stream = None
        held, self._held = sorted(self._held, key=lambda e: e.position), []
        if not held:
            return docs, []
        refold = Refold(self._across, self._every)
        _, snapshots = refold.page(held)
        return docs + refold.projector.documents, snapshots

    def _fold(self, run: list[RecordedEvent]) -> list[Snapshot]:
        if not run or self._refold is None:
            return []
        return self._refold.page(run)[1]

    def _close(self) -> list[Doc]:
        docs = self._refold.projector.documents if self._refold is not None else []
        self._refold = None
        return docs


def fold(
    projection: Projection, events: Iterable[RecordedEvent], state: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Fold events in one go: the reference every other path must agree with."""
    for event in events:
        if projection.key(event) is not None:
            state = projection.apply(state, event) or state
    return state
