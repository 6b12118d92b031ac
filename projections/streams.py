"""Projections keyed by their stream: one document per ``<prefix><id>`` stream."""

from __future__ import annotations

from typing import ClassVar

from sessionstream.core.vocabulary import stream_key
from sessionstream.eventstore.model import RecordedEvent


class PerStream:
    """The document key is the stream's id after ``prefix``; other streams are ignored."""

    prefix: ClassVar[str]
    snapshots = False

    def key(self, event: RecordedEvent) -> str | None:
        return stream_key(event.stream_id, self.prefix)
