"""The ``anthropic`` engine: Claude through the Anthropic Messages API, natively.

The documented product runs a Claude agent with a skeleton-updating tool; its users
want Claude here without a proxy translating it into another dialect. The model is
asked exactly what the ``openai`` engine asks (``contract.py``), and fails in the same
words (``provider.py``); what is left here is the Messages dialect: the system prompt
as its own field, turns that alternate user / assistant, content blocks that are text
or ``tool_use`` (whose input arrives as ``input_json_delta`` pieces that parse only
once joined), a ``stop_reason`` in ``message_delta``, and ``message_stop`` last.

Configured by the SDK's own variables, read once by the settings: ``ANTHROPIC_API_KEY``
and ``ANTHROPIC_BASE_URL``, plus ``SESSIONSTREAM_MODEL``. Both are passed to the client
explicitly, so the SDK never looks for credentials of its own (profiles, files) that the
settings would not show. The ``anthropic`` package is an optional extra
(``sessionstream[anthropic]``), imported when the engine is built.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sessionstream.core.errors import ConfigError, EngineError
from sessionstream.core.settings import (
    DEFAULT_ANTHROPIC_MODEL,
    DEFAULT_ENGINE_TIMEOUT_S,
    Settings,
)
from sessionstream.engines.base import Message, StreamItem, TextDelta, TurnInput
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
    from anthropic import AsyncAnthropic, AsyncStream
    from anthropic.types import MessageParam, ToolParam

#: where the SDK sends requests when ``ANTHROPIC_BASE_URL`` is unset
ANTHROPIC_API_URL = "https://api.anthropic.com"
#: the Messages API needs a cap; a skeleton, a draft and a short reply fit well inside it
MAX_TOKENS = 4096

_TOOLS: list[ToolParam] = [
    {"name": t.name, "description": t.description, "input_schema": t.schema} for t in TOOLS
]


@dataclass(slots=True)
class _ToolUse:
    """A ``tool_use`` block whose input JSON is still arriving in pieces."""

    name: str
    pieces: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Reading:
    """What a turn has read of its stream so far, beyond the text it passed on."""

    open_tools: dict[int, _ToolUse] = field(default_factory=dict)
    #: tool calls complete, parsed once nothing can cut them off any more
    finished: list[_ToolUse] = field(default_factory=list)
    stop_reason: str | None = None
    stopped: bool = False


def _index(event: object) -> int:
    value = json_field(event, "index")
    if isinstance(value, int):
        return value
    raise ValueError(f"a content block event without an index: {event!r:.80}")


def alternating(messages: list[Message]) -> list[MessageParam]:
    """The Messages API wants turns that alternate, starting with the user: consecutive
    messages of one role are joined, and a chat that starts with the assistant (a
    session seeded by hand) gets an empty-handed user turn before it."""
    turns: list[tuple[str, list[str]]] = []
    for m in messages:
        if turns and turns[-1][0] == m.role:
            turns[-1][1].append(m.content)
        else:
            turns.append((m.role, [m.content]))
    if turns and turns[0][0] != "user":
        turns.insert(0, ("user", ["(continuing an earlier conversation)"]))
    out: list[MessageParam] = []
    for role, parts in turns:
        text = "\n\n".join(parts)
        out.append(
            {"role": "assistant", "content": text}
            if role == "assistant"
            else {"role": "user", "content": text}
        )
    return out


class AnthropicEngine(ProviderEngine):
    """A ``ModelEngine`` backed by the Anthropic Messages API (or a server speaking it)."""

    name = "anthropic"

    def __init__(
        self,
        *,
        model: str = DEFAULT_ANTHROPIC_MODEL,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_ENGINE_TIMEOUT_S,
        idle_timeout_s: float | None = None,
        max_retries: int = 0,
        max_tokens: int = MAX_TOKENS,
        temperature: float | None = None,
    ) -> None:
        try:
            import anthropic
        except ImportError as exc:
            raise ConfigError(
                "the anthropic engine needs the anthropic package: "
                "pip install 'sessionstream[anthropic]' (or set SESSIONSTREAM_ENGINE=offline)"
            ) from exc
        if not api_key:
            if base_url is None:
                raise ConfigError(
                    "ANTHROPIC_API_KEY is not set; set it, or set ANTHROPIC_BASE_URL to a "
                    "server that needs no key (a gateway that adds it, or a local fake)"
                )
            api_key = LOCAL_API_KEY
        self._sdk = anthropic
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.idle_timeout_s = timeout_s if idle_timeout_s is None else idle_timeout_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._client: AsyncAnthropic = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url or ANTHROPIC_API_URL,
            timeout=timeout_s,
            max_retries=max_retries,
            http_client=http_client(anthropic, base_url),
        )
        self.endpoint = Endpoint(
            provider="Anthropic API",
            base_url=shown_url(base_url or ANTHROPIC_API_URL),
            model=model,
            url_var="ANTHROPIC_BASE_URL",
            key_var="ANTHROPIC_API_KEY",
            dialect="the Anthropic Messages API",
            url_hint=" (without /v1: the SDK adds it)",
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AnthropicEngine:
        """Build from the settings (``SESSIONSTREAM_MODEL``, ``ANTHROPIC_BASE_URL``,
        ``ANTHROPIC_API_KEY``, ``SESSIONSTREAM_ENGINE_TIMEOUT_S``), already validated there."""
        return cls(
            model=settings.model,
            base_url=settings.anthropic_base_url,
            api_key=settings.anthropic_api_key,
            timeout_s=settings.engine_timeout_s,
        )

    def _options(self) -> dict[str, Any]:
        return {} if self.temperature is None else {"temperature": self.temperature}

    # -- ModelEngine ----------------------------------------------------------------------

    async def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        async def start() -> AsyncStream[object]:
            # The SDK makes the request (auth, status errors, timeouts, the SSE framing,
            # error and ping events); each event comes back as the JSON it was, not as a
            # pydantic model, whose construction was most of a token's CPU.
            raw = await self._client.messages.with_raw_response.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=turn_system(inp),
                messages=alternating(conversation(inp)),
                tools=_TOOLS,
                stream=True,
                **self._options(),
            )
            stream: AsyncStream[object] = await raw.parse(to=self._sdk.AsyncStream[object])
            return stream

        reading = _Reading()
        async with aclosing(self._opened(start)) as events:
            async for event in events:
                try:
                    items = self._event(event, reading, inp)
                except ValueError as exc:  # an event of the wrong shape
                    raise self.endpoint.malformed(str(exc)) from exc
                for item in items:
                    yield item
        if not reading.stopped:
            # The API always ends with message_stop; a stream without it was cut off.
            raise self.endpoint.malformed("the stream ended before message_stop")
        truncated = reading.stop_reason == "max_tokens"
        for item in self._parsed(reading.finished, inp, truncated=truncated):
            yield item

    def _event(self, event: object, reading: _Reading, inp: TurnInput) -> list[StreamItem]:
        """The items one event (its JSON) completes; tool input waits in ``reading``."""
        kind = json_field(event, "type")
        items: list[StreamItem] = []
        if kind == "content_block_start":
            # a new block means the earlier ones were complete
            items += self._parsed(reading.finished, inp, truncated=False)
            block = json_field(event, "content_block")
            block_type = json_field(block, "type")
            if block_type == "tool_use":
                reading.open_tools[_index(event)] = _ToolUse(json_text(block, "name") or "")
            elif block_type == "text" and (text := json_text(block, "text")):
                items.append(TextDelta(text))
        elif kind == "content_block_delta":
            delta = json_field(event, "delta")
            delta_type = json_field(delta, "type")
            if delta_type == "text_delta" and (text := json_text(delta, "text")):
                items.append(TextDelta(text))
            elif delta_type == "input_json_delta" and _index(event) in reading.open_tools:
                piece = json_text(delta, "partial_json") or ""
                reading.open_tools[_index(event)].pieces.append(piece)
        elif kind == "content_block_stop":
            if _index(event) in reading.open_tools:
                reading.finished.append(reading.open_tools.pop(_index(event)))
        elif kind == "message_delta":
            reading.stop_reason = (
                json_text(json_field(event, "delta"), "stop_reason") or reading.stop_reason
            )
            truncated = reading.stop_reason == "max_tokens"
            items += self._parsed(reading.finished, inp, truncated=truncated)
        elif kind == "message_stop":
            reading.stopped = True
        return items

    def _parsed(self, done: list[_ToolUse], inp: TurnInput, *, truncated: bool) -> list[StreamItem]:
        """The stream items of the finished tool calls, which are then forgotten."""
        items: list[StreamItem] = []
        calls, done[:] = list(done), []
        for call in calls:
            try:
                item = tool_item(call.name, "".join(call.pieces), inp, truncated=truncated)
            except EngineError as exc:
                raise self.endpoint.about(exc) from None
            items += [item] if item is not None else []
        return items

    async def _complete(self, system: str, prompt: str) -> str:
        message = await self._asked(
            self._client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=system,
                messages=[{"role": "user", "content": prompt}],
                **self._options(),
            )
        )
        return "".join(block.text for block in message.content if block.type == "text")

    async def check(self, timeout_s: float = CHECK_TIMEOUT_S) -> str:
        """Looks the model up: free, and it proves the URL, the key and the model at once
        (the lookup takes the aliases a request takes)."""
        info = await self._asked(self._client.models.retrieve(self.model), timeout_s)
        return f"{self.endpoint.base_url} answers and serves model {info.id}"

    async def aclose(self) -> None:
        await self._client.close()
