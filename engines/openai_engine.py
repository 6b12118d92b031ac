"""The ``openai`` engine: any OpenAI-compatible chat-completions endpoint.

One engine serves OpenAI, vLLM, Ollama, llama.cpp and LiteLLM because they all speak the
same streaming chat-completions dialect. What the model is asked, and how its tool calls
are read, is the shared contract in ``contract.py``; how a failure reads is
``provider.py``. What is left here is the dialect: messages with a system role, tool
calls whose JSON arguments arrive in pieces keyed by index, ``finish_reason`` on the
last chunk.

The ``openai`` package is an optional extra (``sessionstream[openai]``); it is imported
when an engine is built, so the offline default works without it. A configuration that
cannot work (no API key for the OpenAI API, no ``openai`` package) is a ``ConfigError``
when the engine is built, at start-up, before any run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sessionstream.core.errors import ConfigError, EngineError
from sessionstream.core.settings import DEFAULT_ENGINE_TIMEOUT_S, DEFAULT_MODEL, Settings
from sessionstream.engines.base import StreamItem, TextDelta, TurnInput
from sessionstream.engines.contract import TOOLS, conversation, tool_item, turn_system
from sessionstream.engines.provider import (
    CHECK_TIMEOUT_S,
    LOCAL_API_KEY,
    Endpoint,
    ProviderEngine,
    http_client,
    json_field,
    json_text,
    shown_url,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI, AsyncStream
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

_TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": t.name, "description": t.description, "parameters": t.schema},
    }
    for t in TOOLS
]


@dataclass(slots=True)
class _PendingCall:
    """A tool call whose arguments are still arriving in pieces."""

    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _list(value: object, name: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise ValueError(f"{name} is not a list: {value!r:.80}")


class OpenAIEngine(ProviderEngine):
    """A ``ModelEngine`` backed by an OpenAI-compatible chat-completions endpoint."""

    name = "openai"

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_ENGINE_TIMEOUT_S,
        idle_timeout_s: float | None = None,
        max_retries: int = 0,
        temperature: float | None = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:
            raise ConfigError(
                "the openai engine needs the openai package: "
                "pip install 'sessionstream[openai]' (or set SESSIONSTREAM_ENGINE=offline)"
            ) from exc
        if not api_key:
            if base_url is None:
                raise ConfigError(
                    "OPENAI_API_KEY is not set; set it, or set OPENAI_BASE_URL to a local "
                    "server (any dummy key works there)"
                )
            api_key = LOCAL_API_KEY
        self._sdk = openai
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        # A stream that goes quiet is as dead as one that never starts.
        self.idle_timeout_s = timeout_s if idle_timeout_s is None else idle_timeout_s
        self.temperature = temperature
        self._client: AsyncOpenAI = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout_s,
            max_retries=max_retries,
            http_client=http_client(openai, base_url),
        )
        self.endpoint = Endpoint(
            provider="OpenAI-compatible provider",
            base_url=shown_url(str(self._client.base_url)),
            model=model,
            url_var="OPENAI_BASE_URL",
            key_var="OPENAI_API_KEY",
            dialect="an OpenAI-compatible chat-completions API",
            url_hint=" (it usually ends in /v1)",
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIEngine:
        """Build from the settings (``SESSIONSTREAM_MODEL``, ``OPENAI_BASE_URL``,
        ``OPENAI_API_KEY``, ``SESSIONSTREAM_ENGINE_TIMEOUT_S``), already validated there."""
        return cls(
            model=settings.model,
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            timeout_s=settings.engine_timeout_s,
        )

    def _options(self) -> dict[str, Any]:
        return {} if self.temperature is None else {"temperature": self.temperature}

    # -- ModelEngine ----------------------------------------------------------------------

    async def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": turn_system(inp)}
        ]
        for m in conversation(inp):
            if m.role == "assistant":
                messages.append({"role": "assistant", "content": m.content})
            else:
                messages.append({"role": "user", "content": m.content})

        async def start() -> AsyncStream[object]:
            # The SDK makes the request (auth, status errors, timeouts, the SSE framing,
            # in-stream error events, [DONE]); each chunk comes back as the JSON it was,
            # not as a pydantic model, whose construction was most of a token's CPU.
            raw = await self._client.chat.completions.with_raw_response.create(
                model=self.model, messages=messages, tools=_TOOLS, stream=True, **self._options()
            )
            stream: AsyncStream[object] = raw.parse(to=self._sdk.AsyncStream[object])
            return stream

        pending: dict[int, _PendingCall] = {}
        finish_reason: str | None = None
        async with aclosing(self._opened(start)) as chunks:
            async for chunk in chunks:
                try:
                    items, finish_reason = self._chunk(chunk, pending, inp, finish_reason)
                except ValueError as exc:  # a chunk of the wrong shape
                    raise self.endpoint.malformed(str(exc)) from exc
                for item in items:
                    yield item
        if finish_reason is None:
            # Every compatible server ends a reply with a finish_reason; a stream without
            # one was cut off, or was never a chat-completions stream (an HTML page).
            raise self.endpoint.malformed("the stream ended before the reply was complete")
        for done in sorted(pending):
            last = self._tool_item(pending.pop(done), inp, finish_reason)
            if last is not None:
                yield last

    def _chunk(
        self, chunk: object, pending: dict[int, _PendingCall], inp: TurnInput, finish: str | None
    ) -> tuple[list[StreamItem], str | None]:
        """The items one chunk (its JSON) completes, and the finish reason so far."""
        items: list[StreamItem] = []
        for choice in _list(json_field(chunk, "choices"), "choices"):
            items += self._read(json_field(choice, "delta"), pending, inp)
            finish = json_text(choice, "finish_reason") or finish
        return items, finish

    def _read(
        self, delta: Any, pending: dict[int, _PendingCall], inp: TurnInput
    ) -> list[StreamItem]:
        """The items one chunk completes; tool-call pieces wait in ``pending``."""
        if delta is None:
            return []
        text = json_text(delta, "content") or json_text(delta, "refusal")
        items: list[StreamItem] = [TextDelta(text)] if text else []
        for call in _list(json_field(delta, "tool_calls"), "tool_calls"):
            index = json_field(call, "index")
            index = index if isinstance(index, int) else 0
            # Providers stream tool calls one after another, so a new index means every
            # earlier call is complete (and was not cut off by the token limit).
            for done in sorted(i for i in pending if i < index):
                complete = self._tool_item(pending.pop(done), inp, None)
                items += [complete] if complete is not None else []
            slot = pending.setdefault(index, _PendingCall())
            function = json_field(call, "function")
            if function is not None:
                slot.name = json_text(function, "name") or slot.name
                arguments = json_text(function, "arguments")
                if arguments:
                    slot.arguments.append(arguments)
        return items

    def _tool_item(
        self, call: _PendingCall, inp: TurnInput, finish_reason: str | None
    ) -> StreamItem | None:
        raw = "".join(call.arguments)
        try:
            return tool_item(call.name, raw, inp, truncated=finish_reason == "length")
        except EngineError as exc:
            raise self.endpoint.about(exc) from None

    async def _complete(self, system: str, prompt: str) -> str:
        completion = await self._asked(
            self._client.chat.completions.create(
                model=self.model,
                messages=[
                    {"role": "system", "content": system},
                    {"role": "user", "content": prompt},
                ],
                **self._options(),
            )
        )
        content = completion.choices[0].message.content if completion.choices else None
        return content or ""

    async def check(self, timeout_s: float = CHECK_TIMEOUT_S) -> str:
        """Lists the provider's models: cheap, free, and answered by OpenAI, vLLM, Ollama
        and LiteLLM alike, so it proves the URL and the key and names the model's fate."""
        page = await self._asked(self._client.models.list(), timeout_s)
        served = [m.id for m in page.data]
        # Ollama lists "llama3.1:latest" for a model asked for as "llama3.1"
        if self.model in served or f"{self.model}:latest" in served:
            return f"{self.endpoint.base_url} answers and serves model {self.model}"
        shown = ", ".join(served[:10]) + (", ..." if len(served) > 10 else "")
        raise self.endpoint.failure(
            f"model not served (it lists {len(served)}: {shown or 'none'})",
            "Set SESSIONSTREAM_MODEL to one of them.",
        )

    async def aclose(self) -> None:
        await self._client.close()
