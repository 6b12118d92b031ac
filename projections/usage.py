"""What each user's requests have stored, folded from the events they appended.

The per-user storage quota (``services/quota.py``) reads this document
before a write. An event counts for the user its ``actor`` metadata names
(``{"type": "user", "id": ...}``: every event a user's request appends);
what a model writes during a run is the run's, bounded per run by the
engine, and not counted. The log is append-only: deleting a session gives
nothing back, since its events are still stored.
"""

from __future__ import annotations

from typing import Any

from sessionstream.core.readmodels import Usage
from sessionstream.eventstore.model import DocIndex, RecordedEvent, stored_bytes
from sessionstream.projections.streams import Typed


def user_of(metadata: dict[str, Any]) -> str | None:
    """The user whose request appended an event with this metadata, if a user's."""
    who = metadata.get("actor")
    if isinstance(who, dict) and who.get("type") == "user" and isinstance(who.get("id"), str):
        return str(who["id"])
    return None


class UsageProjection(Typed[Usage]):
    kind = "usage"
    version = 1
    snapshots = False

    def key(self, event: RecordedEvent) -> str | None:
        return user_of(event.metadata)

    def evolve(self, state: Usage | None, event: RecordedEvent) -> Usage | None:
        size = stored_bytes(event)
        if state is None:
            return {"user_id": user_of(event.metadata) or "", "bytes": size, "events": 1}
        return {**state, "bytes": state["bytes"] + size, "events": state["events"] + 1}

    def columns(self, state: Usage) -> DocIndex:
        return DocIndex(owner=state["user_id"])
