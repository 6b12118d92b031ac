"""The offline engine: a deterministic stand-in for the framework LLM.

It exists so the service is usable, and testable end to end, with no model provider.
It follows the documented chat flow (clarifying questions on turn 1, a framework by
turn 2 or 3, refinements after) with no randomness, clock or network.

It is stateless: everything comes from the ``TurnInput``. The skeleton is its memory,
so a rollback or a hand-PATCHed skeleton is what the next turn refines; a foreign
skeleton (e.g. the docs' ``{hook, value_prop}``) is adopted, not rejected.

Skeleton shape (every template uses only the turn's allowed variables)::

    {"hook", "value_proposition", "call_to_action": str,
     "cta_type": "call" | "demo" | "reply" | "resource",
     "tone": "casual" | "friendly" | "professional" | "formal",
     "length": "short" | "standard" | "long",
     "brief": {"kind", "audience", "offer", "angle", "sender", "sender_name", "proof"},
     "mentions": [str], "omit": ["proof" | "ps" | "opener"], "excluded_vars": [str],
     "subject_variant": int, "custom_subject": str,
     "subject": "%var% template", "body": "template with %vars% and &&instruction&& blocks",
     "blocks": [{"name", "instruction", "fields": [var], "approach", "fallback"}],
     "exampleSubject", "exampleBody": str,     # rendered for the first sample lead
     "sequence": {"position", "total_nodes"}}  # follow-ups only

A block's ``fallback`` is a %var% sentence. The draft is the body with each block
replaced by its fallback, so the draft works for any lead without a model.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from sessionstream.engines.base import (
    DraftUpdate,
    ExampleInput,
    ExampleResult,
    SkeletonUpdate,
    StreamItem,
    TextDelta,
    TurnInput,
)
from sessionstream.engines.brief import (
    _GO_AHEAD,
    _THANKS,
    _WORD,
    _extract,
    _merge,
    _Plan,
    _seq,
    _tone_of,
)
from sessionstream.engines.conversation import (
    _apply,
    _ask,
    _ask_again,
    _converged,
    _describe,
    _from_skeleton,
    _topics,
)
from sessionstream.engines.framework import (
    _compose,
    _personalise,
)
from sessionstream.engines.templates import (
    clean_value,
)


def respond(inp: TurnInput) -> tuple[str, dict[str, Any] | None, tuple[str, str] | None]:
    """One turn as data: the reply, the new skeleton (or None), the new draft (or None)."""
    seq = _seq(inp.sequence_context)
    leads = [x for x in inp.sample_leads if isinstance(x, dict)]
    history = [m for m in inp.history if isinstance(m.content, str)]
    message = inp.message if isinstance(inp.message, str) else ""
    users = [m.content for m in history if m.role == "user"] + [message]
    assistant_turns = sum(1 for m in history if m.role == "assistant")
    current = inp.skeleton if isinstance(inp.skeleton, dict) and inp.skeleton else None
    if current is None:
        topics = _topics(_extract(users[0]), seq, leads)
        facts = _Plan()
        for i, text in enumerate(users):
            facts = _merge(facts, _extract(text, topics if i else None))
        if assistant_turns == 0:
            return _ask(facts, topics, seq, leads), None, None
        brief = (facts.audience, facts.offer, facts.angle, facts.sender, facts.proof, facts.cta)
        known = sum(map(bool, brief))
        if assistant_turns == 1 and known < 3 and not _GO_AHEAD.search(message):
            return _ask_again(facts, seq), None, None
        plan = replace(facts, tone=_tone_of(facts), cta=facts.cta or "call")
        skeleton, subject, body = _compose(plan, inp.available_vars, seq, leads)
        return _converged(plan, facts, skeleton, body, seq, leads), skeleton, (subject, body)
    plan = _from_skeleton(current, users[:-1])
    new_plan, changes, notes = _apply(plan, message)
    if changes:
        skeleton, subject, body = _compose(new_plan, inp.available_vars, seq, leads)
        old = inp.draft_body if isinstance(inp.draft_body, str) else ""
        reply = (
            f"Done: {'; '.join(changes)}. {' '.join(notes)}".rstrip() + "\n\n"
            f"{_describe(skeleton, body, old)}\n\nThat's framework version "
            f"{inp.framework_version + 1}. Anything else to adjust?"
        )
        return reply, skeleton, (subject, body)
    skeleton, _, body = _compose(plan, inp.available_vars, seq, leads)
    if notes:
        lead = " ".join(notes)
    elif _THANKS.search(message):
        lead = (
            "Glad it works. The draft is ready: generate examples for a few leads to see "
            "how the personalisation lands."
        )
    else:
        lead = "Here's where the framework stands:"
    summary = (
        f"{lead}\n\n{_describe(skeleton, body)}\n\nI can make it shorter or longer, more "
        "formal or more casual, switch the call to action (a call, a demo, or a reply "
        '"yes"), change the subject, mention something specific, or remove a part.'
    )
    return summary, None, None


def write_example(inp: ExampleInput) -> ExampleResult:
    """One personalised email for ``inp.lead`` from the skeleton (or the draft)."""
    lead = inp.lead if isinstance(inp.lead, dict) else {}
    lead_id = clean_value(lead.get("lead_id")) or clean_value(lead.get("id")) or ""
    skel = inp.skeleton if isinstance(inp.skeleton, dict) else {}
    subject_t, body_t = skel.get("subject"), skel.get("body")
    subject_t = subject_t if isinstance(subject_t, str) and subject_t.strip() else inp.draft_subject
    body_t = body_t if isinstance(body_t, str) and body_t.strip() else inp.draft_body
    if not isinstance(subject_t, str) or not isinstance(body_t, str) or not body_t.strip():
        seq = _seq(inp.sequence_context)
        composed, subject, _ = _compose(_from_skeleton(skel, []), inp.available_vars, seq, [])
        skel = {**composed, **{k: v for k, v in skel.items() if k in ("tone", "brief")}}
        subject_t = subject_t if isinstance(subject_t, str) else subject
        body_t = body_t if isinstance(body_t, str) and body_t.strip() else composed["body"]
    subject, body, missing = _personalise(skel, subject_t, body_t, lead)
    return ExampleResult(lead_id, subject, body, missing)


class _Paced:
    """A turn's items, one per ``__anext__``, with a pause before each word.

    Deliberately not an async generator: a consumer that times out a pending
    ``__anext__`` (``asyncio.wait_for`` while coalescing deltas) cancels it, and a
    cancellation inside a generator ends that generator for good, truncating the
    reply. Here a cancelled call only leaves its item for the next call.
    """

    def __init__(self, items: list[StreamItem], pace_s: float) -> None:
        self._items, self._pace_s, self._next = items, pace_s, 0

    def __aiter__(self) -> _Paced:
        return self

    async def __anext__(self) -> StreamItem:
        if self._next >= len(self._items):
            raise StopAsyncIteration
        item = self._items[self._next]
        # sleep(0) when unpaced still yields, so a fast engine never starves the loop
        await asyncio.sleep(self._pace_s if self._next and isinstance(item, TextDelta) else 0)
        self._next += 1
        return item


class OfflineEngine:
    """The default ``ModelEngine``: same input, same output, streamed word by word."""

    name = "offline"
    model: str | None = None

    def __init__(self, pace_ms: float = 0) -> None:
        self.pace_s = max(0.0, float(pace_ms)) / 1000.0

    def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        reply, skeleton, draft = respond(inp)
        items: list[StreamItem] = [TextDelta(word) for word in _WORD.findall(reply)]
        items += [SkeletonUpdate(skeleton)] if skeleton is not None else []
        items += [DraftUpdate(*draft)] if draft is not None else []
        return _Paced(items, self.pace_s)

    async def example(self, inp: ExampleInput) -> ExampleResult:
        return write_example(inp)

    async def aclose(self) -> None:
        return None
