"""Users and their API tokens, folded from ``user-<id>`` streams.

Tokens are stored only as sha256 hashes; the token read model is keyed by
that hash so authentication is one primary-key lookup.
"""

from __future__ import annotations

from typing import Any

from sessionstream.core.vocabulary import USER_PREFIX, EventType
from sessionstream.eventstore.model import DocIndex, RecordedEvent
from sessionstream.projections.streams import PerStream

PREFIX = USER_PREFIX


class UserProjection(PerStream):
    prefix = PREFIX
    kind = "user"
    version = 1

    def apply(self, state: dict[str, Any] | None, event: RecordedEvent) -> dict[str, Any] | None:
        if event.type == EventType.USER_CREATED:
            return {
                "id": event.data["id"],
                "name": event.data["name"],
                "created_at": event.recorded_at,
                "tokens": 0,
            }
        if state is None:
            return None
        if event.type == EventType.TOKEN_ISSUED:
            return {**state, "tokens": state["tokens"] + 1}
        if event.type == EventType.TOKEN_REVOKED:
            return {**state, "tokens": max(0, state["tokens"] - 1)}
        return state

    def index(self, state: dict[str, Any]) -> DocIndex:
        return DocIndex(created_at=state["created_at"])


class TokenProjection:
    kind = "token"
    version = 1
    snapshots = False

    def key(self, event: RecordedEvent) -> str | None:
        if event.type in (EventType.TOKEN_ISSUED, EventType.TOKEN_REVOKED):
            return str(event.data["token_hash"])
        return None

    def apply(self, state: dict[str, Any] | None, event: RecordedEvent) -> dict[str, Any] | None:
        user_id = event.stream_id[len(PREFIX) :]
        if event.type == EventType.TOKEN_ISSUED:
            return {"user_id": user_id, "issued_at": event.recorded_at, "revoked": False}
        if state is None:
            return None
        return {**state, "revoked": True}

    def index(self, state: dict[str, Any]) -> DocIndex:
        return DocIndex(owner=state["user_id"], deleted=state["revoked"])
