"""Authentication at the HTTP edge: where a credential travels, and the middleware.

Who a token belongs to is decided by ``services/accounts.py``; this module
only reads the credential off a request, rates the attempt and stores the
principal on the request for the handlers.

The request limiter keys on the credential as the request will be
authenticated with it (``limiter_key``): the token a channel resolves, or
the client's address when there is none. It used to key on the raw
``Authorization`` text on the realtime routes, so ``Bearer`` followed by a
different number of spaces each time, or a junk ``Authorization`` header
beside ``?token=``, got a fresh bucket for every request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aiohttp import hdrs, web

from sessionstream.core.errors import Unauthorized
from sessionstream.server.errors import Handler
from sessionstream.server.keys import AUTH, AUTH_FAILURES, LIMITER, PRINCIPAL
from sessionstream.services.accounts import TOKEN_PREFIX, RunTokens, hash_token

#: paths that authenticate themselves (run tokens, websockets) or need no auth
PUBLIC_PREFIXES = ("/api/realtime/", "/realtime/", "/static/", "/metrics", "/healthz")
PUBLIC_PATHS = frozenset({"/", "/api/openapi.json", "/healthz", "/readyz"})
#: channels that check their own tokens; their requests still count against the token's rate
REALTIME_PREFIXES = ("/api/realtime/", "/realtime/")
TRIGGER_PREFIX = "/realtime/"
#: a websocket subprotocol that carries a token: ``bearer.<token>``
BEARER_PREFIX = "bearer."


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


def channel_credential(request: web.Request) -> str | None:
    """The token a realtime request authenticates with, wherever it travels.

    The Trigger.dev feeds (``/realtime/v1/``) take the ``Authorization``
    header only, as the SDK sends it; the ``/api/realtime/`` channels take
    any of the three places ``credential`` reads.
    """
    if request.path.startswith(TRIGGER_PREFIX):
        return bearer_token(request.headers.get(hdrs.AUTHORIZATION)) or None
    return credential(
        request.headers.get(hdrs.AUTHORIZATION),
        offered_protocols(request.headers),
        request.query.get("token"),
    )


def limiter_key(token: str | None, address: str) -> str:
    """The request limiter's bucket: the token's hash, or the address of a client with none."""
    return hash_token(token) if token else f"address:{address}"


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
        app[LIMITER].check(limiter_key(channel_credential(request), address))
        try:
            return await handler(request)
        except Unauthorized:
            failures.check(address)
            raise
    try:
        token = required_bearer(request.headers.get(hdrs.AUTHORIZATION))
    except Unauthorized:
        app[LIMITER].check(limiter_key(None, address))
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
