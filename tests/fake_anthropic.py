"""A local fake of the Anthropic Messages API (``POST /v1/messages``, ``GET /v1/models``).

The engine is tested against real HTTP and the real ``anthropic`` SDK, so what is faked is
only the provider. It streams server-sent events the way the API does: ``message_start``,
then per content block ``content_block_start`` (``text`` or ``tool_use``), its
``content_block_delta``s (``text_delta``, or ``input_json_delta`` carrying pieces of the
tool input's JSON that only parse once joined) and ``content_block_stop``, then
``message_delta`` with the stop reason and ``message_stop``, with a ``ping`` after the
start. Failures are the API's too: an ``error`` event in the middle of a stream, HTTP
errors with the API's error body (401 ``authentication_error``, 529 ``overloaded_error``),
and a hang with the headers sent and nothing after.

Use ``async with run_fake_anthropic() as (base_url, fake):`` then ``fake.script(...)``;
each request to ``/v1/messages`` takes the next scripted behaviour, in order.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fake_openai import stamp

#: the models ``GET /v1/models`` lists unless a test says otherwise
MODELS = ("claude-fake-1", "claude-fake-2")


@dataclass(frozen=True)
class ToolUse:
    """A tool call; ``input`` given as a string is streamed verbatim (e.g. broken JSON)."""

    name: str
    input: dict[str, Any] | str
    id: str = ""


@dataclass(frozen=True)
class Reply:
    """A normal answer, streamed or not depending on the request's ``stream`` flag."""

    text: str = ""
    tools: tuple[ToolUse, ...] = ()
    #: characters per text / partial-JSON piece, so every block spans several deltas
    piece: int = 5
    stop_reason: str | None = None  # default: "tool_use" if any tools, else "end_turn"
    #: send the headers and this many events, then nothing (a provider stalling mid-reply)
    hang_after_events: int | None = None
    #: send an ``error`` event (overloaded, as the API does under load) after this many
    error_after_events: int | None = None
    #: pause between events, seconds
    pace_s: float = 0.0
    #: end the stream after this many events without ``message_stop`` (a cut connection)
    cut_after_events: int | None = None
    #: drop the connection after this many events, the body unfinished (a network failure)
    drop_after_events: int | None = None
    #: each text piece is replaced, as it is sent, by the provider's clock
    #: (``tests.fake_openai.stamp``): a benchmark's marked tokens
    stamped: bool = False


@dataclass(frozen=True)
class Error:
    """An HTTP error with the API's error body."""

    status: int
    type: str = "api_error"
    message: str = "fake provider error"


@dataclass(frozen=True)
class Hang:
    """Send the response headers of a stream, then nothing at all."""


@dataclass(frozen=True)
class Raw:
    """Answer 200 with this body verbatim: what a server that is not the API might send."""

    body: str
    content_type: str = "text/event-stream"


Behaviour = Reply | Error | Hang | Raw


def overloaded() -> Error:
    return Error(529, "overloaded_error", "Overloaded")


def bad_key() -> Error:
    return Error(401, "authentication_error", "invalid x-api-key")


class FakeAnthropic:
    """The script and the record of one fake server."""

    def __init__(self) -> None:
        self.queue: deque[Behaviour] = deque()
        #: the JSON body of every ``/v1/messages`` request, in arrival order
        self.requests: list[dict[str, Any]] = []
        #: the headers of every request, in arrival order
        self.headers: list[dict[str, str]] = []
        self.models: tuple[str, ...] = MODELS
        #: when set, every request is refused with this (e.g. ``bad_key()``)
        self.refuse: Error | None = None
        # Set on shutdown so hung handlers return and the server stops at once.
        self.released = asyncio.Event()

    def script(self, *behaviours: Behaviour) -> None:
        self.queue.extend(behaviours)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model}", self.get_model)
        return app

    async def get_model(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        if self.refuse is not None:
            return _error(self.refuse)
        name = request.match_info["model"]
        if name not in self.models:
            return _error(Error(404, "not_found_error", f"model: {name}"))
        return web.json_response(_model(name))

    async def list_models(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        if self.refuse is not None:
            return _error(self.refuse)
        data = [_model(name) for name in self.models]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return web.json_response(
            {"data": data, "has_more": False, "first_id": first, "last_id": last}
        )

    async def messages(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        body = await request.json()
        self.requests.append(body)
        if self.refuse is not None:
            return _error(self.refuse)
        if not self.queue:
            return _error(Error(500, "api_error", "fake server: no scripted behaviour left"))
        behaviour = self.queue.popleft()
        if isinstance(behaviour, Error):
            return _error(behaviour)
        if isinstance(behaviour, Raw):
            return web.Response(text=behaviour.body, content_type=behaviour.content_type)
        model = str(body.get("model", "claude-fake-1"))
        if isinstance(behaviour, Hang):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await self.released.wait()
            return resp
        if body.get("stream"):
            return await self._stream(request, behaviour, model)
        return web.json_response(_message(behaviour, model))

    async def _stream(self, request: web.Request, reply: Reply, model: str) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "request-id": "req_fake"}
        )
        await resp.prepare(request)
        for n, (event, data) in enumerate(_events(reply, model)):
            if reply.hang_after_events is not None and n >= reply.hang_after_events:
                await self.released.wait()
                return resp
            if reply.cut_after_events is not None and n >= reply.cut_after_events:
                break
            if reply.drop_after_events is not None and n >= reply.drop_after_events:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if reply.error_after_events is not None and n >= reply.error_after_events:
                err = {
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "Overloaded"},
                }
                await resp.write(_sse("error", err))
                break
            if reply.stamped and data.get("delta", {}).get("type") == "text_delta":
                data["delta"]["text"] = stamp()
            await resp.write(_sse(event, data))
            if reply.pace_s:
                await asyncio.sleep(reply.pace_s)
        await resp.write_eof()
        return resp


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _error(err: Error) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": err.type, "message": err.message},
        "request_id": "req_fake",
    }
    return web.json_response(body, status=err.status, headers={"request-id": "req_fake"})


def _model(name: str) -> dict[str, Any]:
    return {
        "type": "model",
        "id": name,
        "display_name": name.replace("-", " ").title(),
        "created_at": "2026-01-01T00:00:00Z",
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), max(size, 1))]


def _input_json(tool: ToolUse) -> str:
    return tool.input if isinstance(tool.input, str) else json.dumps(tool.input)


def _stop(reply: Reply) -> str:
    return reply.stop_reason or ("tool_use" if reply.tools else "end_turn")


def _usage(output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": 25,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _events(reply: Reply, model: str) -> list[tuple[str, dict[str, Any]]]:
    """The events the API sends for ``reply``, in order."""
    start: dict[str, Any] = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(1),
    }
    out: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("ping", {"type": "ping"}),
    ]
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if reply.text:
        deltas = [{"type": "text_delta", "text": p} for p in _pieces(reply.text, reply.piece)]
        blocks.append(({"type": "text", "text": ""}, deltas))
    for i, tool in enumerate(reply.tools):
        head = {
            "type": "tool_use",
            "id": tool.id or f"toolu_{i:02d}",
            "name": tool.name,
            "input": {},
        }
        # the API's first input_json_delta is often empty; the rest are arbitrary cuts
        pieces = ["", *_pieces(_input_json(tool), reply.piece)]
        blocks.append((head, [{"type": "input_json_delta", "partial_json": p} for p in pieces]))
    for index, (head, deltas) in enumerate(blocks):
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": head},
            )
        )
        for delta in deltas:
            out.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop(reply), "stop_sequence": None},
                "usage": {"output_tokens": 42},
            },
        )
    )
    out.append(("message_stop", {"type": "message_stop"}))
    return out


def _message(reply: Reply, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for i, tool in enumerate(reply.tools):
        value = tool.input if isinstance(tool.input, dict) else json.loads(tool.input)
        content.append(
            {
                "type": "tool_use",
                "id": tool.id or f"toolu_{i:02d}",
                "name": tool.name,
                "input": value,
            }
        )
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": model,
        "stop_reason": _stop(reply),
        "stop_sequence": None,
        "usage": _usage(42),
    }


@asynccontextmanager
async def run_fake_anthropic() -> AsyncIterator[tuple[str, FakeAnthropic]]:
    """Serve a fresh fake on 127.0.0.1 at a free port; yields ``(base_url, fake)``.

    ``base_url`` has no ``/v1``: the Anthropic SDK adds it, as for ``api.anthropic.com``.
    """
    fake = FakeAnthropic()
    runner = web.AppRunner(fake.app(), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", fake
    finally:
        fake.released.set()
        await runner.cleanup()
