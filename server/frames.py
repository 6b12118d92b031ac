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

from sessionstream.eventstore.model import RecordedEvent

RUN_PREFIX = "run-"
SESSION_PREFIX = "session-"


def run_id_of(event: RecordedEvent) -> str | None:
    if event.stream_id.startswith(RUN_PREFIX):
        return event.stream_id[len(RUN_PREFIX) :]
    return None


def session_id_of(event: RecordedEvent) -> str | None:
    if event.stream_id.startswith(SESSION_PREFIX):
        return event.stream_id[len(SESSION_PREFIX) :]
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
