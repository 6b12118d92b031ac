"""Users and their API tokens, folded from ``user-<id>`` streams.

Tokens are stored only as sha256 hashes; the token read model is keyed by
that hash so authentication is one primary-key lookup.
"""

from __future__ import annotations

from sessionstream.core.readmodels import Token, User
from sessionstream.core.vocabulary import USER_PREFIX, EventType, stream_key
from sessionstream.eventstore.model import DocIndex, RecordedEvent
from sessionstream.projections.streams import PerStream, Typed

PREFIX = USER_PREFIX


class UserProjection(PerStream[User]):
    prefix = PREFIX
    kind = "user"
    version = 1

    def evolve(self, state: User | None, event: RecordedEvent) -> User | None:
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

    def columns(self, state: User) -> DocIndex:
        return DocIndex(created_at=state["created_at"])


class TokenProjection(Typed[Token]):
    kind = "token"
    version = 1
    snapshots = False

    def key(self, event: RecordedEvent) -> str | None:
        if event.type in (EventType.TOKEN_ISSUED, EventType.TOKEN_REVOKED):
            return str(event.data["token_hash"])
        return None

    def evolve(self, state: Token | None, event: RecordedEvent) -> Token | None:
        user_id = stream_key(event.stream_id, PREFIX) or ""
        if event.type == EventType.TOKEN_ISSUED:
            return {"user_id": user_id, "issued_at": event.recorded_at, "revoked": False}
        if state is None:
            return None
        return {**state, "revoked": True}

    def columns(self, state: Token) -> DocIndex:
        return DocIndex(owner=state["user_id"], deleted=state["revoked"])
