"""The ``openai`` engine: any OpenAI-compatible chat-completions endpoint.

One engine serves OpenAI, vLLM, Ollama, llama.cpp and LiteLLM because they all speak the
same streaming chat-completions dialect. The skeleton and the draft travel as tool calls
(``update_skeleton``, ``update_draft``) rather than as text, so the reply the user reads
stays prose and the structured parts arrive as JSON the run layer can trust or reject.

The ``openai`` package is an optional extra (``sessionstream[openai]``); it is imported
when an engine is built, so the offline default works without it.

Failures become ``EngineError`` with a reason a user can act on; the run layer turns it
into ``run.failed``. The client never retries on its own: a retried hang looks like a
slow model, and the run layer is the one place that decides what a failure means.
A configuration that cannot work (no API key for the OpenAI API, no ``openai``
package) is a ``ConfigError`` when the engine is built, at start-up, before any run.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sessionstream.core.errors import ConfigError, EngineError
from sessionstream.core.settings import DEFAULT_ENGINE_TIMEOUT_S, DEFAULT_MODEL, Settings
from sessionstream.engines.base import (
    DraftUpdate,
    ExampleInput,
    ExampleResult,
    SkeletonUpdate,
    StreamItem,
    TextDelta,
    TurnInput,
)
from sessionstream.engines.templates import canonical, lead_value, render, restrict_to, variables_in

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

#: Local servers (Ollama, llama.cpp, vLLM) ignore the key, but the SDK insists on one.
LOCAL_API_KEY = "sk-local-no-key"
_MAX_LEADS_IN_PROMPT = 5
_MAX_DETAIL = 300

_SKELETON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "hook": {"type": "string", "description": "the opening angle that earns attention"},
        "value_proposition": {"type": "string", "description": "why the lead should care"},
        "call_to_action": {"type": "string", "description": "the one thing to ask for"},
        "tone": {"type": "string", "enum": ["casual", "friendly", "professional", "formal"]},
        "subject": {"type": "string", "description": "subject template with %var% variables"},
        "body": {
            "type": "string",
            "description": "body template: %var% variables and &&instruction&& blocks",
        },
        "blocks": {
            "type": "array",
            "description": "one entry per &&instruction&& block of the body, in order",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "instruction": {"type": "string"},
                    "fields": {"type": "array", "items": {"type": "string"}},
                    "fallback": {
                        "type": "string",
                        "description": "a %var% sentence used when no model personalises",
                    },
                },
                "required": ["name", "instruction", "fallback"],
            },
        },
    },
    "required": ["hook", "value_proposition", "call_to_action", "subject", "body", "blocks"],
}

_DRAFT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "subject": {"type": "string", "description": "subject template with %var% variables"},
        "body": {"type": "string", "description": "complete email body with %var% variables"},
    },
    "required": ["subject", "body"],
}

_TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "update_skeleton",
            "description": "Propose or revise the email framework (skeleton).",
            "parameters": _SKELETON_SCHEMA,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "update_draft",
            "description": "Write or rewrite the draft email that follows the skeleton.",
            "parameters": _DRAFT_SCHEMA,
        },
    },
]

_TURN_PROMPT = """\
You are the framework writer of an email campaign tool. In one chat you help the user \
design ONE campaign email: a reusable framework (the skeleton) and a draft built from it.

How to work:
- On the first turn, if the brief is thin, ask 2-3 short clarifying questions (audience, \
offer, desired action, tone) and do not call any tool yet.
- Converge within 2-4 turns: as soon as you know enough, call update_skeleton and \
update_draft in the same turn, then briefly say what you wrote.
- On later turns, refine: change only what the user asks for, and call the tools again \
with the complete new versions.
- Keep chat replies short; the email itself goes in the tools, never in the reply text.

Email rules:
- Personalise only with these template variables, written as %name%: {variables}. \
Never invent others; if a detail is not among them, write around it.
- The skeleton has hook, value_proposition, call_to_action, subject, body and blocks. \
The body may hold &&instruction&& blocks (per-lead writing instructions); list each \
block in blocks with name, instruction, fields (variables it draws on) and a fallback \
sentence that uses only allowed variables.
- The draft (update_draft) is the body with every block replaced by finished text, so \
it works for any lead.
- Ground the tone and details on the sample leads below; do not copy one lead's facts \
into the template.
"""


@dataclass(slots=True)
class _PendingCall:
    """A tool call whose arguments are still arriving in pieces."""

    name: str = ""
    arguments: list[str] = field(default_factory=list)


def _dump(value: Any, limit: int = 4000) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + " ...(truncated)"


def _detail(exc: Any) -> str:
    """The provider's own words for an error, short enough for a run's failure reason."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        message = str(getattr(exc, "message", "") or exc)
    return message[:_MAX_DETAIL]


def _restrict_all(value: Any, allowed: tuple[str, ...]) -> Any:
    """The allowed-variable guarantee the offline engine gives, applied to model output."""
    if isinstance(value, str):
        return restrict_to(canonical(value), allowed)
    if isinstance(value, list):
        return [_restrict_all(v, allowed) for v in value]
    if isinstance(value, dict):
        return {k: _restrict_all(v, allowed) for k, v in value.items()}
    return value


def _json_object(text: str) -> dict[str, Any] | None:
    """Parse a model's JSON reply, tolerating the code fences many models add."""
    text = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
    if fenced:
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            return None
        try:
            value = json.loads(text[start : end + 1])
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


class OpenAIEngine:
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
        self._openai = openai
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        # A stream that goes quiet is as dead as one that never starts.
        self.idle_timeout_s = timeout_s if idle_timeout_s is None else idle_timeout_s
        self.temperature = temperature
        self._client: AsyncOpenAI = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries
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

    # -- errors ---------------------------------------------------------------------------

    def _where(self) -> str:
        return self.base_url or "the OpenAI API"

    def _provider_error(self, exc: Exception) -> EngineError:
        """Translate an SDK error into a reason the run can report; order matters because
        the SDK's timeout error is a connection error and its 429 is a status error."""
        o = self._openai
        if isinstance(exc, o.RateLimitError):
            return EngineError(
                f"rate limited by provider (HTTP 429): {_detail(exc)}; try again later",
                details={"status": 429},
            )
        if isinstance(exc, o.APITimeoutError):
            return EngineError(f"provider timed out after {self.timeout_s:g}s")
        if isinstance(exc, o.APIConnectionError):
            cause = f" ({exc.__cause__!r})" if exc.__cause__ else ""
            return EngineError(f"cannot reach provider at {self._where()}: {exc}{cause}")
        if isinstance(exc, o.APIStatusError):
            status = getattr(exc, "status_code", None)
            return EngineError(
                f"provider returned HTTP {status}: {_detail(exc)}", details={"status": status}
            )
        return EngineError(f"provider error: {_detail(exc)}")

    # -- prompts --------------------------------------------------------------------------

    def _turn_messages(self, inp: TurnInput) -> list[ChatCompletionMessageParam]:
        parts = [_TURN_PROMPT.format(variables=", ".join(f"%{v}%" for v in inp.available_vars))]
        if inp.sample_leads:
            leads = list(inp.sample_leads[:_MAX_LEADS_IN_PROMPT])
            parts.append(f"Sample leads (JSON): {_dump(leads)}")
        if inp.sequence_context:
            parts.append(
                "This email is part of a sequence. If it is a follow-up, acknowledge the "
                "earlier emails briefly, add something new and do not repeat them. "
                f"Sequence context (JSON): {_dump(inp.sequence_context)}"
            )
        if inp.skeleton:
            parts.append(
                f"Current skeleton (framework version {inp.framework_version}): "
                f"{_dump(inp.skeleton)}"
            )
        else:
            parts.append("There is no skeleton yet.")
        if inp.draft_subject or inp.draft_body:
            parts.append(
                f"Current draft subject: {inp.draft_subject or ''}\n"
                f"Current draft body:\n{inp.draft_body or ''}"
            )
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": "\n\n".join(parts)}
        ]
        for m in inp.history:
            if not m.content:
                continue
            if m.role == "assistant":
                messages.append({"role": "assistant", "content": m.content})
            else:
                messages.append({"role": "user", "content": m.content})
        messages.append({"role": "user", "content": inp.message})
        return messages

    def _example_messages(self, inp: ExampleInput) -> list[ChatCompletionMessageParam]:
        system = (
            "You write one personalised cold email for one lead from a campaign framework. "
            "Follow the skeleton's structure, hook, value proposition and call to action; "
            "write each &&instruction&& block for this lead; fill every %variable% from the "
            "lead, and where the lead lacks a value write naturally around it. "
            "Reply with only a JSON object: "
            '{"subject": "...", "body": "..."} with no template syntax left in either.'
        )
        parts = [
            f"Skeleton (JSON): {_dump(inp.skeleton)}",
            f"Draft subject template: {inp.draft_subject or ''}",
            f"Draft body template:\n{inp.draft_body or ''}",
            f"Allowed variables: {', '.join(inp.available_vars)}",
            f"Lead (JSON): {_dump(inp.lead)}",
        ]
        if inp.sequence_context:
            parts.append(f"Sequence context (JSON): {_dump(inp.sequence_context)}")
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": "\n\n".join(parts)},
        ]

    def _options(self) -> dict[str, Any]:
        return {} if self.temperature is None else {"temperature": self.temperature}

    # -- ModelEngine ----------------------------------------------------------------------

    async def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        try:
            async with asyncio.timeout(self.timeout_s):
                stream = await self._client.chat.completions.create(
                    model=self.model,
                    messages=self._turn_messages(inp),
                    tools=_TOOLS,
                    stream=True,
                    **self._options(),
                )
        except TimeoutError:
            raise EngineError(f"provider timed out after {self.timeout_s:g}s") from None
        except self._openai.OpenAIError as exc:
            raise self._provider_error(exc) from exc

        pending: dict[int, _PendingCall] = {}
        finish_reason: str | None = None
        try:
            chunks = aiter(stream)
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout_s):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise EngineError(
                        f"provider timed out after {self.idle_timeout_s:g}s "
                        "of silence in the middle of its reply"
                    ) from None
                except self._openai.OpenAIError as exc:
                    raise self._provider_error(exc) from exc
                for choice in chunk.choices or ():
                    delta = choice.delta
                    if delta is not None:
                        text = delta.content or delta.refusal
                        if text:
                            yield TextDelta(text)
                        for call in delta.tool_calls or ():
                            index = call.index if call.index is not None else 0
                            # Providers stream tool calls one after another, so a new
                            # index means every earlier call is complete.
                            for done in sorted(i for i in pending if i < index):
                                item = self._tool_item(pending.pop(done), inp, finish_reason)
                                if item is not None:
                                    yield item
                            slot = pending.setdefault(index, _PendingCall())
                            if call.function is not None:
                                if call.function.name:
                                    slot.name = call.function.name
                                if call.function.arguments:
                                    slot.arguments.append(call.function.arguments)
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
            for done in sorted(pending):
                item = self._tool_item(pending.pop(done), inp, finish_reason)
                if item is not None:
                    yield item
        finally:
            await stream.close()

    def _tool_item(
        self, call: _PendingCall, inp: TurnInput, finish_reason: str | None
    ) -> StreamItem | None:
        if call.name not in ("update_skeleton", "update_draft"):
            # A hallucinated tool is noise, not a failure: the reply text still stands.
            return None
        raw = "".join(call.arguments)
        try:
            args = json.loads(raw) if raw.strip() else None
        except ValueError as exc:
            cut = " (the reply was cut off at the token limit)" if finish_reason == "length" else ""
            raise EngineError(
                f"model sent invalid JSON arguments for {call.name}{cut}: {exc}",
                details={"tool": call.name, "arguments": raw[:_MAX_DETAIL]},
            ) from None
        if not isinstance(args, dict) or not args:
            raise EngineError(
                f"model sent {call.name} arguments that are not a JSON object",
                details={"tool": call.name, "arguments": raw[:_MAX_DETAIL]},
            )
        if call.name == "update_skeleton":
            if len(args) == 1 and isinstance(args.get("skeleton"), dict):
                args = args["skeleton"]  # some models wrap the object in its own name
            return SkeletonUpdate(_restrict_all(args, inp.available_vars))
        subject, body = args.get("subject"), args.get("body")
        if not isinstance(subject, str) or not isinstance(body, str):
            raise EngineError(
                "model sent update_draft without string subject and body",
                details={"tool": call.name, "arguments": raw[:_MAX_DETAIL]},
            )
        return DraftUpdate(
            subject=restrict_to(canonical(subject), inp.available_vars),
            body=restrict_to(canonical(body), inp.available_vars),
        )

    async def example(self, inp: ExampleInput) -> ExampleResult:
        try:
            async with asyncio.timeout(self.timeout_s):
                completion = await self._client.chat.completions.create(
                    model=self.model, messages=self._example_messages(inp), **self._options()
                )
        except TimeoutError:
            raise EngineError(f"provider timed out after {self.timeout_s:g}s") from None
        except self._openai.OpenAIError as exc:
            raise self._provider_error(exc) from exc
        content = completion.choices[0].message.content if completion.choices else None
        reply = _json_object(content or "")
        if (
            reply is None
            or not isinstance(reply.get("subject"), str)
            or not isinstance(reply.get("body"), str)
        ):
            raise EngineError(
                "model did not reply with a JSON object holding string subject and body",
                details={"reply": (content or "")[:_MAX_DETAIL]},
            )
        lead = inp.lead
        # Whatever template syntax the model left in is resolved the way drafts render.
        subject = render(reply["subject"], lead)
        body = render(reply["body"], lead)
        templates = (
            inp.draft_subject or inp.skeleton.get("subject"),
            inp.draft_body or inp.skeleton.get("body"),
        )
        missing: list[str] = []
        for name in [v for t in templates for v in variables_in(t)]:
            if name not in missing and lead_value(lead, name) is None:
                missing.append(name)
        for name in subject.missing + body.missing:
            if name not in missing:
                missing.append(name)
        return ExampleResult(
            lead_id=str(lead.get("lead_id", "")),
            subject=subject.text,
            body=body.text,
            missing=tuple(missing),
        )

    async def aclose(self) -> None:
        await self._client.close()
