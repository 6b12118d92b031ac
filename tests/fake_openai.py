"""A local fake of an OpenAI-compatible ``POST /v1/chat/completions`` endpoint.

The engine is tested against real HTTP and the real ``openai`` SDK, so what is faked is
only the provider: it speaks the wire format (SSE ``data:`` chunks ending ``[DONE]``,
tool-call arguments split over several chunks, OpenAI's error JSON) and does what each
test scripts, including the failures real providers have (429, 500, hangs).

Use ``async with run_fake_openai() as (base_url, fake):`` then ``fake.script(...)``;
each chat request takes the next scripted behaviour, in order. ``GET /v1/models`` lists
``fake.models`` (what ``doctor`` asks), unless ``fake.refuse`` refuses every request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class ToolCall:
    """A tool call; ``arguments`` given as a string is sent verbatim (e.g. broken JSON)."""

    name: str
    arguments: dict[str, Any] | str
    id: str = ""


@dataclass(frozen=True)
class Reply:
    """A normal answer, streamed or not depending on the request's ``stream`` flag."""

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    #: characters per content / argument piece, so every part spans several chunks
    piece: int = 5
    finish_reason: str | None = None  # default: "tool_calls" if any, else "stop"
    #: stop and hang forever after this many SSE chunks (a provider stalling mid-reply)
    hang_after_chunks: int | None = None
    #: pause between chunks, seconds
    pace_s: float = 0.0
    #: send an in-stream ``{"error": ...}`` event after this many chunks
    stream_error_after: int | None = None
    #: end the stream after this many chunks, with no finish_reason and no ``[DONE]``
    cut_after_chunks: int | None = None
    #: drop the connection after this many chunks, the body unfinished (a network failure)
    drop_after_chunks: int | None = None
    #: each content piece is replaced, as it is sent, by the provider's clock
    #: (``time.perf_counter()``, 7 decimals and a space): a benchmark's marked tokens
    stamped: bool = False


@dataclass(frozen=True)
class Error:
    """An HTTP error with OpenAI's error body."""

    status: int
    message: str = "fake provider error"
    type: str = "server_error"
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Hang:
    """Accept the request and never answer (not even headers)."""


@dataclass(frozen=True)
class Raw:
    """Answer 200 with this body verbatim: what a server that is not the API might send."""

    body: str
    content_type: str = "text/event-stream"


Behaviour = Reply | Error | Hang | Raw

#: the models ``GET /v1/models`` lists unless a test says otherwise
MODELS = ("fake-model", "llama3.1:latest")


def rate_limited(message: str = "Rate limit reached for requests") -> Error:
    return Error(429, message, "requests", "rate_limit_exceeded", {"retry-after": "1"})


class FakeOpenAI:
    """The script and the record of one fake server."""

    def __init__(self) -> None:
        self.queue: deque[Behaviour] = deque()
        #: the JSON body of every request, in arrival order
        self.requests: list[dict[str, Any]] = []
        self.models: tuple[str, ...] = MODELS
        #: when set, every request is refused with this (e.g. a 401)
        self.refuse: Error | None = None
        # Set on shutdown so hung handlers return and the server stops at once.
        self.released = asyncio.Event()

    def script(self, *behaviours: Behaviour) -> None:
        self.queue.extend(behaviours)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_get("/v1/models", self.list_models)
        return app

    async def list_models(self, request: web.Request) -> web.Response:
        if self.refuse is not None:
            return _error(self.refuse)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.refuse is not None:
            return _error(self.refuse)
        if not self.queue:
            return _error(Error(500, "fake server: no scripted behaviour left"))
        behaviour = self.queue.popleft()
        if isinstance(behaviour, Hang):
            await self.released.wait()
            raise web.HTTPServiceUnavailable()
        if isinstance(behaviour, Error):
            return _error(behaviour)
        if isinstance(behaviour, Raw):
            return web.Response(text=behaviour.body, content_type=behaviour.content_type)
        model = str(body.get("model", "fake-model"))
        if body.get("stream"):
            return await self._stream(request, behaviour, model)
        return web.json_response(_completion(behaviour, model))

    async def _stream(self, request: web.Request, reply: Reply, model: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for n, chunk in enumerate(_chunks(reply, model)):
            if reply.hang_after_chunks is not None and n >= reply.hang_after_chunks:
                await self.released.wait()
                return resp
            if reply.cut_after_chunks is not None and n >= reply.cut_after_chunks:
                break
            if reply.drop_after_chunks is not None and n >= reply.drop_after_chunks:
                assert request.transport is not None
                request.transport.abort()
                return resp
            if reply.stream_error_after is not None and n >= reply.stream_error_after:
                err = {"error": {"message": "fake stream failure", "type": "server_error"}}
                await resp.write(f"data: {json.dumps(err)}\n\n".encode())
                await resp.write_eof()
                return resp
            delta = chunk["choices"][0]["delta"] if chunk["choices"] else {}
            if reply.stamped and delta.get("content"):
                delta["content"] = stamp()
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if reply.pace_s:
                await asyncio.sleep(reply.pace_s)
        else:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def stamp() -> str:
    """A marked token: the moment it is sent, on the clock every process of a host shares."""
    return f"{time.perf_counter():.7f} "


def _error(err: Error) -> web.Response:
    body = {"error": {"message": err.message, "type": err.type, "param": None, "code": err.code}}
    return web.json_response(body, status=err.status, headers=err.headers)


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), max(size, 1))]


def _arguments(call: ToolCall) -> str:
    return call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)


def _finish(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _chunks(reply: Reply, model: str) -> list[dict[str, Any]]:
    """The chunks OpenAI would send: role first, content pieces, then each tool call as
    a header chunk (id, name, empty arguments) followed by argument pieces."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in _pieces(reply.content, reply.piece)]
    for i, call in enumerate(reply.tool_calls):
        header = {
            "index": i,
            "id": call.id or f"call_{i}",
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        out.append(chunk({"tool_calls": [header]}))
        for p in _pieces(_arguments(call), reply.piece):
            out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": p}}]}))
    out.append(chunk({}, _finish(reply)))
    return out


def _completion(reply: Reply, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id or f"call_{i}",
                "type": "function",
                "function": {"name": call.name, "arguments": _arguments(call)},
            }
            for i, call in enumerate(reply.tool_calls)
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(reply)}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@asynccontextmanager
async def run_fake_openai() -> AsyncIterator[tuple[str, FakeOpenAI]]:
    """Serve a fresh fake on 127.0.0.1 at a free port; yields ``(base_url, fake)``.

    ``base_url`` ends in ``/v1`` as the SDK's ``base_url`` expects.
    """
    fake = FakeOpenAI()
    runner = web.AppRunner(fake.app(), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", fake
    finally:
        fake.released.set()
        await runner.cleanup()
