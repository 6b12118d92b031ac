"""Who may open a realtime channel: the token, then the resource, for every wire.

A run may be read with the owner's API token (``sst_...``) or with the run's
``publicAccessToken``, a JWT scoped to that run whose expiry also ends any
channel it opened. A session takes the owner's API token only: a run token
is read-only for one run, never for the session around it. Ownership is
``services.ownership.owned``, so another user's run or session is a 404 like
one that does not exist.

The websocket channels, their SSE twins and the Trigger.dev feeds all
authorise here; they differ only in where the token travels
(``server.auth.credential``). A run token is refused (401) once the API
token it was minted with is revoked, here at open and by
``server/revocation.py`` while the channel is open.
"""

from __future__ import annotations

from dataclasses import dataclass

from sessionstream.core.errors import Unauthorized
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import Doc
from sessionstream.services.accounts import TOKEN_PREFIX, Authenticator, RunTokens
from sessionstream.services.ownership import owned


@dataclass(frozen=True, slots=True)
class Access:
    """An authorised caller, the resource it may read, and what its right hangs on."""

    doc: Doc
    user_id: str
    #: the API token the channel's right comes from (``accounts.token_ref``), directly
    #: or through the run token it minted; revoking it ends the channel
    token_ref: str
    #: epoch seconds at which the run token ends the channel; None for an API token
    expires_at: float | None = None


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
        if token.startswith(TOKEN_PREFIX):
            principal = await self.auth.principal(token)
            doc = await owned(self.store, "run", run_id, principal.user_id)
            return Access(doc, principal.user_id, principal.token_ref)
        claims = self.tokens.verify(token, run_id)
        doc = await owned(self.store, "run", run_id, claims.user_id)
        await self.auth.require_active(claims.user_id, claims.token_ref)
        return Access(doc, claims.user_id, claims.token_ref, claims.expires_at)

    async def session(self, token: str | None, session_id: str, *, hint: str) -> Access:
        """The session ``session_id`` for the holder of the owner's API token."""
        if not token:
            raise Unauthorized(hint)
        if not token.startswith(TOKEN_PREFIX):
            raise Unauthorized("the session channel takes the owner's API token (sst_...)")
        principal = await self.auth.principal(token)
        doc = await owned(self.store, "session", session_id, principal.user_id)
        return Access(doc, principal.user_id, principal.token_ref)
