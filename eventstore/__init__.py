"""The append-only event log: records, the backend contract and its backends."""

from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import (
    ANY_VERSION,
    NO_STREAM,
    AppendRequest,
    AppendResult,
    Doc,
    NewEvent,
    RecordedEvent,
)

__all__ = [
    "ANY_VERSION",
    "NO_STREAM",
    "AppendRequest",
    "AppendResult",
    "Doc",
    "EventStore",
    "NewEvent",
    "RecordedEvent",
]
