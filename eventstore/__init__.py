"""The append-only event log: records, the backend contract and its backends."""

from eventstore.base import EventStore
from eventstore.model import (
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
