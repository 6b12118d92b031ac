"""A Python client for the realtime channels that resumes by itself.

    async for event in stream_run("http://127.0.0.1:8080", run_id, token):
        if event["type"] == "message.delta":
            print(event["data"]["text"], end="", flush=True)

``stream_run`` yields every ``ChatStreamEvent`` of a run exactly once and in
order, and stops after the run's terminal event (``run.completed``,
``run.failed`` or ``run.canceled``). When the connection drops it
reconnects with jittered exponential backoff and resumes with
``after=<last seq>``; frames it already has are skipped by ``seq``.
``stream_session`` does the same for a session channel by ``position`` and
never ends on its own (break out of the loop, or cancel, to stop).

Refusals the client cannot fix by retrying raise ``StreamRefused`` (close
4400/4401/4403/4404 or the same HTTP statuses from a proxy), and a cursor the
server does not accept raises ``ResyncRequired`` (close 4409) with the head
to start again from. ``4408`` (too slow), ``4429`` (too many connections),
``1001`` (shutdown), ``1011`` and network errors are retried.

Heartbeats (``{"type": "heartbeat", ...}``, never yielded) tell a quiet
channel from a node that stopped delivering: one that says ``stalled``, or
no frame for ``stall_s`` once heartbeats have been seen, makes the client
leave the node and resume elsewhere, as after a drop.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from sessionstream.core.errors import SessionStreamError
from sessionstream.core.vocabulary import EventType

SUBPROTOCOL = "sessionstream.v1"
TERMINAL = frozenset({EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELED})
RUN_FINISHED = "run finished"
#: close codes that retrying cannot fix
FATAL_CODES = frozenset({4400, 4401, 4403, 4404, 4409})
FATAL_STATUSES = frozenset({400, 401, 403, 404})
Frame = dict[str, Any]


class StreamError(SessionStreamError):
    """Root of the realtime client's errors."""


class StreamRefused(StreamError):
    """The server refused the channel for a reason a retry cannot fix."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(f"the server refused the channel ({close_code}): {reason}")
        self.close_code = close_code
        self.reason = reason
        self.status = close_code - 4000 if close_code >= 4000 else close_code
        self.code = {401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(
            self.status, "refused"
        )


class ResyncRequired(StreamRefused):
    """The cursor does not fit the stream; subscribe again from ``head`` or from 0."""

    def __init__(self, reason: str, head: int) -> None:
        super().__init__(4409, reason)
        self.head = head


class StreamUnavailable(StreamError):
    """``max_attempts`` consecutive connection attempts failed."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff: a random delay up to ``min(cap, base * 2**n)``."""

    base_s: float = 0.1
    cap_s: float = 10.0

    def delay(self, attempt: int) -> float:
        return random.uniform(self.base_s / 2, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))


def channel_url(base_url: str, path: str, query: dict[str, Any]) -> str:
    """``http(s)://host[/prefix]`` (or ``ws(s)://``) plus the channel path and query."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    full = parts.path.rstrip("/") + path
    return urlunsplit((scheme, parts.netloc, full, urlencode(query), ""))


async def stream_run(
    base_url: str,
    run_id: str,
    token: str,
    *,
    after: int = 0,
    compact: bool = False,
    max_attempts: int | None = None,
    backoff: Backoff = Backoff(),
    stall_s: float = 35.0,
) -> AsyncIterator[Frame]:
    """Every event of a run after ``after`` (its ``seq``), ending with the terminal event.

    ``token`` is the run's ``publicAccessToken`` or the owner's API token.
    With ``compact=True`` (and ``after=0``) the first frame is one
    ``message.snapshot`` with the text so far, then only newer events.
    """
    path = f"/api/realtime/runs/{quote(run_id, safe='')}"
    follow = _follow(
        base_url, path, token, "seq", after, compact, True, max_attempts, backoff, stall_s
    )
    async for frame in follow:
        yield frame


async def stream_session(
    base_url: str,
    session_id: str,
    api_token: str,
    *,
    after: int = 0,
    max_attempts: int | None = None,
    backoff: Backoff = Backoff(),
    stall_s: float = 35.0,
) -> AsyncIterator[Frame]:
    """Every event of a session and its runs after global position ``after``; never ends."""
    path = f"/api/realtime/sessions/{quote(session_id, safe='')}"
    follow = _follow(
        base_url, path, api_token, "position", after, False, False, max_attempts, backoff, stall_s
    )
    async for frame in follow:
        yield frame


async def _follow(
    base_url: str,
    path: str,
    token: str,
    cursor_field: str,
    after: int,
    compact: bool,
    is_run: bool,
    max_attempts: int | None,
    backoff: Backoff,
    stall_s: float,
) -> AsyncIterator[Frame]:
    cursor = after
    failures = 0
    protocols = [Subprotocol(SUBPROTOCOL), Subprotocol(f"bearer.{token}")]
    while True:
        query: dict[str, Any] = {"after": cursor}
        if compact and cursor == 0:
            query["compact"] = 1
        url = channel_url(base_url, path, query)
        code, reason = 1006, "connection failed"
        try:
            async with connect(
                url, subprotocols=protocols, compression=None, max_size=64 * 2**20
            ) as ws:
                beating = False  # heartbeats seen: from then on, silence means a stall
                while True:
                    try:
                        async with asyncio.timeout(stall_s if beating else None):
                            message = await ws.recv()
                    except TimeoutError:
                        stalled = "no heartbeat"
                        break
                    frame = json.loads(message)
                    kind = frame.get("type")
                    if kind == "resync":
                        raise ResyncRequired(str(frame.get("reason")), int(frame.get("head", 0)))
                    if kind == "heartbeat":
                        beating = True
                        if frame.get("stalled"):
                            stalled = "the node reported a stalled delivery"
                            break
                        continue
                    position = frame.get(cursor_field)
                    if not isinstance(position, int):
                        continue  # a control frame this client does not know
                    if position <= cursor:
                        continue  # already delivered before a reconnect
                    cursor = position
                    failures = 0  # progress: the next drop starts the backoff afresh
                    yield frame
                    if is_run and kind in TERMINAL:
                        return
            code, reason = 0, f"stalled: {stalled}"  # leave the node: reconnect, resume
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            reason = exc.rcvd.reason if exc.rcvd is not None else str(exc)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in FATAL_STATUSES:
                raise StreamRefused(4000 + status, _body_message(exc.response.body)) from exc
            code, reason = 1006, f"HTTP {status}"
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            code, reason = 1006, str(exc) or type(exc).__name__
        if code in FATAL_CODES:
            raise StreamRefused(code, reason)
        if is_run and code == 1000 and reason == RUN_FINISHED:
            return  # the cursor was already at the run's terminal event
        failures += 1
        if max_attempts is not None and failures >= max_attempts:
            raise StreamUnavailable(f"gave up after {failures} attempts: {code} {reason}")
        await asyncio.sleep(backoff.delay(failures))


def _body_message(body: bytes | bytearray | None) -> str:
    try:
        return str(json.loads(body or b"")["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return (body or b"").decode(errors="replace")[:200]
