"""Authentication at the HTTP edge: the bearer header and the middleware that checks it.

Who a token belongs to is decided by ``services/accounts.py``; this module
only reads the credential off a request, rates the attempt and stores the
principal on the request for the handlers.
"""

from __future__ import annotations

from aiohttp import web

from sessionstream.core.errors import Unauthorized
from sessionstream.server.errors import Handler
from sessionstream.server.keys import AUTH, AUTH_FAILURES, LIMITER, PRINCIPAL
from sessionstream.services.accounts import hash_token

#: paths that authenticate themselves (run tokens, websockets) or need no auth
PUBLIC_PREFIXES = ("/api/realtime/", "/realtime/", "/static/", "/metrics", "/healthz")
PUBLIC_PATHS = frozenset({"/", "/api/openapi.json", "/healthz", "/readyz"})
#: channels that check their own tokens; their requests still count against the token's rate
REALTIME_PREFIXES = ("/api/realtime/", "/realtime/")


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or "".

    The scheme name is case-insensitive (RFC 9110, section 11.1): ``bearer`` is
    as good as ``Bearer``.
    """
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def required_bearer(header: str | None) -> str:
    token = bearer_token(header)
    if not token:
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    return token


def _channel_credential(request: web.Request) -> str:
    """What a realtime request authenticates with (only ever hashed, for the limiter)."""
    return (
        request.headers.get("Authorization")
        or request.query.get("token")
        or request.headers.get("Sec-WebSocket-Protocol")
        or request.remote
        or "anonymous"
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Rate per credential, then authenticate; failed attempts are rated per address.

    Keying the request limiter by credential alone would give every guessed
    token a fresh bucket, so each refusal also spends from a small bucket of
    the client's address, and an address that has spent it gets 429 before
    any lookup. A token proven valid moments ago (the authenticator's cache)
    is still let in, so a user sharing an address with a guesser keeps working.
    """
    path = request.path
    app = request.app
    if request.method == "OPTIONS" or (
        not path.startswith(REALTIME_PREFIXES)
        and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))
    ):
        return await handler(request)
    address = request.remote or "unknown"
    failures = app[AUTH_FAILURES]
    if path.startswith(REALTIME_PREFIXES):
        # channels check their own tokens; a reconnect storm is rated like any request
        failures.refuse_if_empty(address)
        app[LIMITER].check(hash_token(_channel_credential(request)))
        try:
            return await handler(request)
        except Unauthorized:
            failures.check(address)
            raise
    header = request.headers.get("Authorization")
    try:
        token = required_bearer(header)
    except Unauthorized:
        app[LIMITER].check(hash_token(header or address))
        failures.check(address)
        raise
    digest = hash_token(token)
    app[LIMITER].check(digest)
    try:
        principal = app[AUTH].cached(digest)
        if principal is None:
            failures.refuse_if_empty(address)
            principal = await app[AUTH].principal(token, digest)
    except Unauthorized:
        failures.check(address)
        raise
    request[PRINCIPAL] = principal
    return await handler(request)
