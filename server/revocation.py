"""Revoking an API token ends what it opened, not only what it will open.

Every open realtime connection remembers the API token its right to read
comes from (``Channel.token_ref``): the token it was opened with, or the one
that minted the run token it was opened with. Every ``interval_s`` (the
token cache's lifetime, ``SESSIONSTREAM_TOKEN_CACHE_S``, so a channel
outlives its token no longer than an HTTP request may) the sweep reads the
active tokens of each user holding a channel, one lookup per user however
many channels they hold, and stops each channel whose token is gone with
4401, as a run token's expiry does: a websocket closes with 4401, an SSE
channel ends, a Trigger.dev stream is dropped and a held long-poll answers
at once, the next request of each refused with 401.

Before this an open channel kept streaming after its token was revoked
(until it closed by itself), and a run token minted with a revoked token
stayed valid for its whole 15 minutes. The token is revoked by an event
that another process (the CLI) may append, so no event here can say it
happened: it is looked up. A lookup that fails (the store is briefly
unavailable) stops nothing; the next sweep looks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from sessionstream.core.errors import SessionStreamError
from sessionstream.server.keys import STORE
from sessionstream.server.tail import Connection, Tails
from sessionstream.services.accounts import Authenticator

log = logging.getLogger("sessionstream.revocation")

#: the close a revoked token's channels get: the code an expired token's get
REVOKED = (4401, "the API token this channel was opened with has been revoked")
#: the sweep never runs more often than this, whatever the token cache says
MIN_INTERVAL_S = 1.0


class Revocations:
    """Stops the open channels whose API token has been revoked."""

    def __init__(self, tails: Tails, auth: Authenticator, *, interval_s: float) -> None:
        self.tails = tails
        self.auth = auth
        self.interval_s = max(MIN_INTERVAL_S, interval_s)
        #: channels stopped because their token was revoked, for the metrics and the tests
        self.stopped = 0

    async def sweep(self) -> int:
        """Stop every open channel whose API token is no longer active; how many it stopped."""
        by_user: dict[str, list[Connection]] = {}
        for conn in self.tails.live:
            if conn.end is None:
                by_user.setdefault(conn.channel.user_id, []).append(conn)
        stopped = 0
        for user_id, conns in by_user.items():
            try:
                active = await self.auth.active_refs(user_id)
            except SessionStreamError as exc:
                log.warning("could not check the tokens of user %s: %s", user_id, exc)
                continue
            for conn in conns:
                if conn.channel.token_ref not in active:
                    conn.stop(*REVOKED)
                    stopped += 1
        if stopped:
            self.stopped += stopped
            log.info("closed %d realtime channel(s) of revoked tokens", stopped)
        return stopped

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.sweep()

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """The sweep runs while the app does, under the node's supervisor: a sweep that
        crashes is logged, counted and restarted, never the end of revocation."""
        task = app[STORE].supervisor.spawn("revocation-sweep", self._every_interval)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
