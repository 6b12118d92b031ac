"""What every projection shares: the typed fold behind the store's untyped interface.

The store is schema-agnostic (a document body is ``dict[str, Any]`` to it), so
the one place a projection's typed state meets the store is here: ``apply``
and ``index`` cast once and hand the typed state to the projection's own
``evolve`` and ``columns``. Projections keyed by their stream (one document
per ``<prefix><id>`` stream) take their key from the stream id.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar, cast

from sessionstream.core.vocabulary import stream_key
from sessionstream.eventstore.model import DocIndex, RecordedEvent

S = TypeVar("S")


class Typed(ABC, Generic[S]):
    """A projection whose documents have the shape ``S`` (a TypedDict of ``core.readmodels``)."""

    kind: str
    version: int

    @abstractmethod
    def evolve(self, state: S | None, event: RecordedEvent) -> S | None:
        """Fold one event; must not mutate ``state``."""

    @abstractmethod
    def columns(self, state: S) -> DocIndex:
        """The columns the store lists and filters this document by."""

    def apply(self, state: dict[str, Any] | None, event: RecordedEvent) -> dict[str, Any] | None:
        return cast("dict[str, Any] | None", self.evolve(cast("S | None", state), event))

    def index(self, state: dict[str, Any]) -> DocIndex:
        return self.columns(cast(S, state))


class PerStream(Typed[S]):
    """The document key is the stream's id after ``prefix``; other streams are ignored."""

    prefix: ClassVar[str]
    snapshots = False
    #: each document is folded from its own stream only, so ``verify`` and ``rebuild``
    #: hold one stream's documents at a time (``eventstore.projector.StreamFold``)
    per_stream: ClassVar[bool] = True
    #: False: some documents are not kept (``DocIndex.kept``) and are folded from their
    #: stream when read (``EventStore.get_doc``)
    keeps_every_doc: ClassVar[bool] = True

    def key(self, event: RecordedEvent) -> str | None:
        return stream_key(event.stream_id, self.prefix)
