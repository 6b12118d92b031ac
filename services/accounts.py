"""Accounts: users, their API tokens, who a token belongs to, and run tokens.

API tokens are random, shown once, and stored only as a sha256 hash; the
lookup is by hash and the final comparison is constant-time. Run tokens
(``publicAccessToken``) are HS256 JWTs in the shape the Trigger.dev realtime
SDK carries (issuer, audience, ``exp``, ``pub``, ``scopes``), scoped to one
run and read-only, so browser code written for that SDK works unchanged.

A run token also names the API token that started its run (``tok``: the
first 16 hex digits of that token's sha256, never the token or its whole
hash), so revoking an API token ends the run tokens minted with it too: the
realtime channels check the reference when they open and on a timer
(``server/revocation.py``). Only ``read:runs:<runId>`` is a scope, matched
exactly; the Trigger.dev cloud's wildcards (``read:all``, ``read:runs``)
were never documented here and are refused.

No HTTP here: the CLI creates users and tokens with these commands, and the
server's middleware reads the bearer header and asks :class:`Authenticator`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final, cast

import jwt

from sessionstream.core.errors import Forbidden, NotFound, Unauthorized
from sessionstream.core.ids import uuid7
from sessionstream.core.readmodels import Token
from sessionstream.core.vocabulary import EventType, user_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import NewEvent

TOKEN_PREFIX: Final = "sst_"
JWT_ISSUER: Final = "https://id.trigger.dev"
JWT_AUDIENCE: Final = "https://api.trigger.dev"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_api_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


#: hex digits of an API token's sha256 that name it in run tokens and open channels
REF_CHARS: Final = 16


def token_ref(digest: str) -> str:
    """The short reference to the API token whose sha256 is ``digest``."""
    return digest[:REF_CHARS]


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    #: ``token_ref`` of the API token that authenticated: what run tokens minted with it carry
    token_ref: str


def _system() -> dict[str, Any]:
    """Accounts are managed by operators (the CLI), not by a user's request."""
    return {"actor": "system"}


# commands ------------------------------------------------------------------------------------
async def create_user(store: EventStore, name: str) -> tuple[str, str]:
    """Append a user and a first token; returns (user_id, token). The token is never stored."""
    user_id = uuid7()
    token = new_api_token()
    await store.append(
        user_stream(user_id),
        [
            NewEvent(EventType.USER_CREATED, {"id": user_id, "name": name}, _system()),
            NewEvent(EventType.TOKEN_ISSUED, {"token_hash": hash_token(token)}, _system()),
        ],
        expected_version=0,
    )
    return user_id, token


async def issue_token(store: EventStore, user_id: str) -> str:
    """Another token for an existing user (rotation: issue, deploy, then revoke the old one)."""
    if await store.get_doc("user", user_id) is None:
        raise NotFound(f"user {user_id} not found")
    token = new_api_token()
    event = NewEvent(EventType.TOKEN_ISSUED, {"token_hash": hash_token(token)}, _system())
    await store.append(user_stream(user_id), [event])
    return token


async def revoke_token(store: EventStore, token: str) -> str:
    """Revoke by the token itself (only its hash is stored); returns the owner's id."""
    digest = hash_token(token.strip())
    doc = await store.get_doc("token", digest)
    if doc is None or doc.index.deleted:
        raise NotFound("no such active token")
    user_id = cast(Token, doc.body)["user_id"]
    event = NewEvent(EventType.TOKEN_REVOKED, {"token_hash": digest}, _system())
    await store.append(user_stream(user_id), [event])
    return user_id


# resolving a token ---------------------------------------------------------------------------
async def principal_for_token(
    store: EventStore, token: str, digest: str | None = None
) -> Principal:
    if not token.startswith(TOKEN_PREFIX):
        raise Unauthorized("unknown API token")
    digest = digest or hash_token(token)
    doc = await store.get_doc("token", digest)
    if doc is None or doc.index.deleted or not hmac.compare_digest(doc.key, digest):
        raise Unauthorized("unknown API token")
    return Principal(cast(Token, doc.body)["user_id"], token_ref(digest))


class Authenticator:
    """Resolves API tokens, trusting a resolved token for a few seconds.

    Every request authenticates, and on SQLite the read-model lookup is a hop
    to a reader thread that costs as much as serving the session itself. A
    token is only ever revoked by appending ``token.revoked``, possibly from
    another process (the CLI), so this cache cannot be invalidated by events:
    a revoked token keeps working for at most ``ttl_s``. Misses are never
    cached, so a token created a moment ago works at once.
    """

    def __init__(self, store: EventStore, ttl_s: float, *, max_entries: int = 10_000) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._hits: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        #: per user: the refs of their active tokens, and until when they are trusted
        self._refs: OrderedDict[str, tuple[frozenset[str], float]] = OrderedDict()

    def cached(self, digest: str) -> Principal | None:
        """The principal of a token (by its hash) resolved less than ``ttl_s`` ago."""
        hit = self._hits.get(digest)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    async def principal(self, token: str, digest: str | None = None) -> Principal:
        digest = digest or hash_token(token)
        hit = self.cached(digest)
        if hit is not None:
            return hit
        principal = await principal_for_token(self.store, token, digest)
        if self.ttl_s <= 0:
            return principal
        now = time.monotonic()
        self._hits[digest] = (principal, now + self.ttl_s)
        self._hits.move_to_end(digest)
        while len(self._hits) > self.max_entries:
            self._hits.popitem(last=False)
        return principal

    async def active_refs(self, user_id: str) -> frozenset[str]:
        """The ``token_ref`` of each of ``user_id``'s active API tokens, read now.

        What was cached for a token that is gone is dropped, so the HTTP API
        refuses it from this moment too, not only once its cache entry ends.
        """
        docs = await self.store.list_docs("token", owner=user_id)
        refs = frozenset(token_ref(doc.key) for doc in docs)
        before = self._refs.pop(user_id, None)
        if self.ttl_s > 0:
            self._refs[user_id] = (refs, time.monotonic() + self.ttl_s)
            while len(self._refs) > self.max_entries:
                self._refs.popitem(last=False)
        if before is not None and before[0] - refs:
            gone = tuple(before[0] - refs)
            for digest in [d for d in self._hits if d.startswith(gone)]:
                del self._hits[digest]
        return refs

    async def require_active(self, user_id: str, ref: str) -> None:
        """Refuse (401) a run token whose API token has been revoked.

        Trusted for ``ttl_s`` like a resolved API token: a Trigger.dev client
        re-authorises every long-poll, and one lookup per poll would cost as
        much as the poll.
        """
        hit = self._refs.get(user_id)
        refs = hit[0] if hit is not None and hit[1] > time.monotonic() else None
        if refs is None or ref not in refs:
            refs = await self.active_refs(user_id)
        if ref not in refs:
            raise Unauthorized("the API token this run token was minted with has been revoked")


# run tokens ----------------------------------------------------------------------------------
def run_scope(run_id: str) -> str:
    """The one scope a run token has: read that run."""
    return f"read:runs:{run_id}"


@dataclass(frozen=True, slots=True)
class RunToken:
    """What a verified run token says: whose run, minted with which API token, until when."""

    user_id: str
    token_ref: str
    expires_at: float


class RunTokens:
    """Mints and verifies ``publicAccessToken``s."""

    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def mint(self, run_id: str, user_id: str, *, token_ref: str, ttl_s: int | None = None) -> str:
        """A token that reads ``run_id``, for as long as the API token ``token_ref`` is active."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": JWT_ISSUER,
            "aud": JWT_AUDIENCE,
            "sub": user_id,
            "iat": now,
            "exp": now + (self.ttl_s if ttl_s is None else ttl_s),
            "pub": True,
            "scopes": [run_scope(run_id)],
            "tok": token_ref,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str, run_id: str) -> RunToken:
        """What the token says, if it may read ``run_id`` (401 invalid, 403 another run's).

        ``scopes`` must be a list of strings, one of them exactly
        ``read:runs:<run_id>``: a string scope used to be searched as text,
        so ``"x read:all y"`` passed.
        """
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],  # never let the token pick its algorithm
                audience=JWT_AUDIENCE,
                issuer=JWT_ISSUER,
                options={"require": ["exp", "iss", "aud", "sub", "scopes", "tok"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the run token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized("the run token is invalid") from exc
        scopes, user_id, ref = claims["scopes"], claims["sub"], claims["tok"]
        if (
            not isinstance(scopes, list)
            or not all(isinstance(scope, str) for scope in scopes)
            or not isinstance(user_id, str)
            or not isinstance(ref, str)
        ):
            raise Unauthorized("the run token is invalid")
        if run_scope(run_id) not in scopes:
            raise Forbidden("this token is for another run")
        return RunToken(user_id, ref, float(claims["exp"]))

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        return token.count(".") == 2 and not token.startswith(TOKEN_PREFIX)
