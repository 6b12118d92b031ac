"""``ChatStreamEvent``: the one frame shape every channel sends.

``{"type", "runId", "sessionId", "seq", "position", "at", "data"}`` where
``seq`` is the event's version in its own stream (a run's seq on run
channels) and ``position`` its global log position (the cursor of session
channels). Websockets, SSE and the Trigger.dev-compatible stream all build
frames here so they can never disagree.
"""

from __future__ import annotations

import json
from typing import Any

from sessionstream.core.vocabulary import RUN_PREFIX, SESSION_PREFIX, stream_key
from sessionstream.eventstore.model import RecordedEvent


def run_id_of(event: RecordedEvent) -> str | None:
    return stream_key(event.stream_id, RUN_PREFIX)


def session_id_of(event: RecordedEvent) -> str | None:
    own = stream_key(event.stream_id, SESSION_PREFIX)
    if own is not None:
        return own
    session = event.metadata.get("session_id")
    return str(session) if session is not None else None


def chat_stream_event(event: RecordedEvent) -> dict[str, Any]:
    return {
        "type": event.type,
        "runId": run_id_of(event),
        "sessionId": session_id_of(event),
        "seq": event.version,
        "position": event.position,
        "at": event.recorded_at,
        "data": event.data,
    }


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 as is: the spelling of every frame on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
