"""What a language model is asked and how its answers are read, for every provider.

The provider engines (``openai_engine.py``, ``anthropic_engine.py``) differ only in wire
format; the prompts, the two tools and the reading of their input are one contract,
written here, so a model behind either API is asked the same thing and held to the
same rules. The skeleton and the draft travel as tool input rather than as text, so
the reply the user reads stays prose and the structured parts arrive as JSON that can
be checked before it reaches the log.

Pure functions: no SDK, no I/O. A model's output that breaks the contract is an
``EngineError`` with the offending input attached, so a run's failure says what the
model sent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sessionstream.core.errors import EngineError
from sessionstream.engines.base import (
    DraftUpdate,
    ExampleInput,
    ExampleResult,
    Message,
    SkeletonUpdate,
    StreamItem,
    TurnInput,
)
from sessionstream.engines.templates import canonical, lead_value, render, restrict_to, variables_in

UPDATE_SKELETON = "update_skeleton"
UPDATE_DRAFT = "update_draft"
MAX_LEADS_IN_PROMPT = 5
#: how much of a model's or provider's own words a failure reason quotes
MAX_DETAIL = 300


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool the model may call, in no provider's dialect."""

    name: str
    description: str
    schema: dict[str, Any]


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

TOOLS: tuple[Tool, ...] = (
    Tool(UPDATE_SKELETON, "Propose or revise the email framework (skeleton).", _SKELETON_SCHEMA),
    Tool(
        UPDATE_DRAFT, "Write or rewrite the draft email that follows the skeleton.", _DRAFT_SCHEMA
    ),
)

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

EXAMPLE_SYSTEM = (
    "You write one personalised cold email for one lead from a campaign framework. "
    "Follow the skeleton's structure, hook, value proposition and call to action; "
    "write each &&instruction&& block for this lead; fill every %variable% from the "
    "lead, and where the lead lacks a value write naturally around it. "
    "Reply with only a JSON object: "
    '{"subject": "...", "body": "..."} with no template syntax left in either.'
)


def _dump(value: Any, limit: int = 4000) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + " ...(truncated)"


# -- what the model is asked --------------------------------------------------------------


def turn_system(inp: TurnInput) -> str:
    """The system prompt of a chat turn: the contract, then the session's state."""
    parts = [_TURN_PROMPT.format(variables=", ".join(f"%{v}%" for v in inp.available_vars))]
    if inp.sample_leads:
        parts.append(f"Sample leads (JSON): {_dump(list(inp.sample_leads[:MAX_LEADS_IN_PROMPT]))}")
    if inp.sequence_context:
        parts.append(
            "This email is part of a sequence. If it is a follow-up, acknowledge the "
            "earlier emails briefly, add something new and do not repeat them. "
            f"Sequence context (JSON): {_dump(inp.sequence_context)}"
        )
    if inp.skeleton:
        parts.append(
            f"Current skeleton (framework version {inp.framework_version}): {_dump(inp.skeleton)}"
        )
    else:
        parts.append("There is no skeleton yet.")
    if inp.draft_subject or inp.draft_body:
        parts.append(
            f"Current draft subject: {inp.draft_subject or ''}\n"
            f"Current draft body:\n{inp.draft_body or ''}"
        )
    return "\n\n".join(parts)


def conversation(inp: TurnInput) -> list[Message]:
    """The chat so far and the new message, oldest first; empty messages say nothing."""
    said = [
        Message("assistant" if m.role == "assistant" else "user", m.content)
        for m in inp.history
        if m.content
    ]
    return [*said, Message("user", inp.message)]


def example_prompt(inp: ExampleInput) -> str:
    """The user message asking for one lead's email (``EXAMPLE_SYSTEM`` is the system)."""
    parts = [
        f"Skeleton (JSON): {_dump(inp.skeleton)}",
        f"Draft subject template: {inp.draft_subject or ''}",
        f"Draft body template:\n{inp.draft_body or ''}",
        f"Allowed variables: {', '.join(inp.available_vars)}",
        f"Lead (JSON): {_dump(inp.lead)}",
    ]
    if inp.sequence_context:
        parts.append(f"Sequence context (JSON): {_dump(inp.sequence_context)}")
    return "\n\n".join(parts)


# -- how its answers are read -------------------------------------------------------------


def _restrict_all(value: Any, allowed: tuple[str, ...]) -> Any:
    """The allowed-variable guarantee the offline engine gives, applied to model output."""
    if isinstance(value, str):
        return restrict_to(canonical(value), allowed)
    if isinstance(value, list):
        return [_restrict_all(v, allowed) for v in value]
    if isinstance(value, dict):
        return {k: _restrict_all(v, allowed) for k, v in value.items()}
    return value


def tool_item(name: str, raw: str, inp: TurnInput, *, truncated: bool) -> StreamItem | None:
    """A finished tool call as a stream item; ``raw`` is its JSON input as received, and
    ``truncated`` says the model stopped at its token limit (which explains broken JSON)."""
    if name not in (UPDATE_SKELETON, UPDATE_DRAFT):
        # A hallucinated tool is noise, not a failure: the reply text still stands.
        return None
    details = {"tool": name, "arguments": raw[:MAX_DETAIL]}
    try:
        args = json.loads(raw) if raw.strip() else None
    except ValueError as exc:
        cut = " (the reply was cut off at the token limit)" if truncated else ""
        raise EngineError(
            f"model sent invalid JSON arguments for {name}{cut}: {exc}", details=details
        ) from None
    if not isinstance(args, dict) or not args:
        raise EngineError(
            f"model sent {name} arguments that are not a JSON object", details=details
        )
    if name == UPDATE_SKELETON:
        if len(args) == 1 and isinstance(args.get("skeleton"), dict):
            args = args["skeleton"]  # some models wrap the object in its own name
        return SkeletonUpdate(_restrict_all(args, inp.available_vars))
    subject, body = args.get("subject"), args.get("body")
    if not isinstance(subject, str) or not isinstance(body, str):
        raise EngineError(
            f"model sent {UPDATE_DRAFT} without string subject and body", details=details
        )
    return DraftUpdate(
        subject=restrict_to(canonical(subject), inp.available_vars),
        body=restrict_to(canonical(body), inp.available_vars),
    )


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


def example_result(content: str, inp: ExampleInput) -> ExampleResult:
    """One lead's email from the model's reply; template syntax the model left in is
    resolved the way drafts render, and every variable the lead lacks is reported."""
    reply = _json_object(content)
    if (
        reply is None
        or not isinstance(reply.get("subject"), str)
        or not isinstance(reply.get("body"), str)
    ):
        raise EngineError(
            "model did not reply with a JSON object holding string subject and body",
            details={"reply": content[:MAX_DETAIL]},
        )
    lead = inp.lead
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
