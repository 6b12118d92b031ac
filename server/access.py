"""Who may open a realtime channel: the token, then the resource, for every wire.

A run may be read with the owner's API token (``sst_...``) or with the run's
``publicAccessToken``, a JWT scoped to that run whose expiry also ends any
channel it opened. A session takes the owner's API token only: a run token
is read-only for one run, never for the session around it. Ownership is
``services.ownership.owned``, so another user's run or session is a 404 like
one that does not exist.

The websocket channels, their SSE twins and the Trigger.dev feeds all
authorise here; they differ only in where the token travels (``credential``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jwt
from aiohttp import hdrs

from sessionstream.core.errors import Unauthorized
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import Doc
from sessionstream.server.auth import bearer_token
from sessionstream.services.accounts import TOKEN_PREFIX, Authenticator, RunTokens
from sessionstream.services.ownership import owned

#: a websocket subprotocol that carries a token: ``bearer.<token>``
BEARER_PREFIX = "bearer."


@dataclass(frozen=True, slots=True)
class Access:
    """An authorised caller and the resource it may read."""

    doc: Doc
    user_id: str
    #: epoch seconds at which the run token ends the channel; None for an API token
    expires_at: float | None = None


def offered_protocols(headers: Mapping[str, str]) -> list[str]:
    raw = headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL, "")
    return [p.strip() for p in raw.split(",") if p.strip()]


def credential(
    authorization: str | None, protocols: Sequence[str], query_token: str | None
) -> str | None:
    """The token a client sent: ``Authorization: Bearer``, a subprotocol, or ``?token=``.

    A subprotocol entry is ``bearer.<token>``; a bare token is accepted too,
    since some clients offer the token itself as the protocol. Browsers cannot
    set headers on a websocket, hence the other two places.
    """
    token = bearer_token(authorization)
    if token:
        return token
    for proto in protocols:
        if proto.startswith(BEARER_PREFIX) and len(proto) > len(BEARER_PREFIX):
            return proto[len(BEARER_PREFIX) :]
        if proto.startswith(TOKEN_PREFIX) or RunTokens.looks_like_jwt(proto):
            return proto
    return query_token or None


class Gate:
    """Checks a channel's token and the resource's owner (401, 403, 404)."""

    def __init__(self, store: EventStore, auth: Authenticator, tokens: RunTokens) -> None:
        self.store = store
        self.auth = auth
        self.tokens = tokens

    async def run(self, token: str | None, run_id: str, *, hint: str) -> Access:
        """The run ``run_id`` for the holder of ``token``; ``hint`` says how to send one."""
        if not token:
            raise Unauthorized(hint)
        expires_at: float | None = None
        if token.startswith(TOKEN_PREFIX):
            user_id = (await self.auth.principal(token)).user_id
        else:
            user_id = self.tokens.verify(token, run_id)
            # verified just above; read again only for the expiry it carries
            claims = jwt.decode(token, options={"verify_signature": False})
            expires_at = float(claims["exp"])
        doc = await owned(self.store, "run", run_id, user_id)
        return Access(doc, user_id, expires_at)

    async def session(self, token: str | None, session_id: str, *, hint: str) -> Access:
        """The session ``session_id`` for the holder of the owner's API token."""
        if not token:
            raise Unauthorized(hint)
        if not token.startswith(TOKEN_PREFIX):
            raise Unauthorized("the session channel takes the owner's API token (sst_...)")
        user_id = (await self.auth.principal(token)).user_id
        doc = await owned(self.store, "session", session_id, user_id)
        return Access(doc, user_id)
