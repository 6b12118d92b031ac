"""The offline engine: the documented chat flow, refinements, variable safety, examples."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionstream.engines.base import (
    DEFAULT_VAR_NAMES,
    DraftUpdate,
    ExampleInput,
    Message,
    ModelEngine,
    SkeletonUpdate,
    TextDelta,
    TurnInput,
)
from sessionstream.engines.offline import OfflineEngine, respond
from sessionstream.engines.templates import variables_in

BRIEF = "Write an intro email for enterprise VPs of Sales, emphasizing time-to-ROI"
ANSWER = (
    "We're Acme Analytics, we sell a revenue forecasting platform. "
    "Customers see ROI in 6 weeks on average. CTA: a 15-minute call."
)
LEADS = (
    {"first_name": "Dana", "last_name": "Smith", "company": "Northwind", "position": "VP of Sales"},
    {"first_name": "Lee", "last_name": "Park", "company": "Globex", "position": "VP of Sales"},
    {"full_name": "Sam Oduya", "company": "Initech", "position": "CRO"},
)


@dataclass
class Result:
    reply: str
    deltas: list[str]
    skeleton: dict[str, Any] | None
    draft: DraftUpdate | None


@dataclass
class Chat:
    """A session as the run engine would feed it: history, skeleton and draft carried over."""

    available_vars: tuple[str, ...] = DEFAULT_VAR_NAMES
    sample_leads: tuple[dict[str, Any], ...] = LEADS
    sequence_context: dict[str, Any] | None = None
    history: list[Message] = field(default_factory=list)
    skeleton: dict[str, Any] | None = None
    version: int = 0
    subject: str | None = None
    body: str | None = None

    def input(self, message: str) -> TurnInput:
        return TurnInput(
            message=message,
            history=tuple(self.history),
            skeleton=self.skeleton,
            framework_version=self.version,
            draft_subject=self.subject,
            draft_body=self.body,
            available_vars=self.available_vars,
            sample_leads=self.sample_leads,
            sequence_context=self.sequence_context,
        )

    def say(self, message: str, engine: OfflineEngine | None = None) -> Result:
        result = run_turn(engine or OfflineEngine(), self.input(message))
        self.history += [Message("user", message), Message("assistant", result.reply)]
        if result.skeleton is not None:
            self.skeleton, self.version = result.skeleton, self.version + 1
        if result.draft is not None:
            self.subject, self.body = result.draft.subject, result.draft.body
        return result


def run_turn(engine: OfflineEngine, inp: TurnInput) -> Result:
    async def collect() -> list[Any]:
        return [item async for item in engine.turn(inp)]

    items = asyncio.run(collect())
    deltas = [i.text for i in items if isinstance(i, TextDelta)]
    # text first, then the framework: clients render the reply before the draft changes
    kinds = [type(i) for i in items]
    assert kinds == sorted(kinds, key=lambda k: k is not TextDelta)
    skeletons = [i.skeleton for i in items if isinstance(i, SkeletonUpdate)]
    drafts = [i for i in items if isinstance(i, DraftUpdate)]
    assert len(skeletons) <= 1 and len(drafts) <= 1
    return Result(
        "".join(deltas), deltas, skeletons[0] if skeletons else None, drafts[0] if drafts else None
    )


def converged(**kwargs: Any) -> Chat:
    chat = Chat(**kwargs)
    chat.say(BRIEF)
    assert chat.say(ANSWER).skeleton is not None
    return chat


def template_strings(skeleton: dict[str, Any], draft: DraftUpdate | None) -> list[str]:
    """Every string the engine emits as a template (examples are rendered text, not templates)."""
    out: list[str] = [draft.subject, draft.body] if draft else []

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, str) and key not in ("exampleSubject", "exampleBody"):
            out.append(value)
        elif isinstance(value, list):
            for item in value:
                walk(item, key)
        elif isinstance(value, dict):
            for k, item in value.items():
                walk(item, k)

    walk(skeleton)
    return out


def test_is_a_model_engine() -> None:
    engine: ModelEngine = OfflineEngine()
    assert engine.name == "offline"
    asyncio.run(engine.aclose())


def test_scripted_conversation() -> None:
    chat = Chat()
    first = chat.say(BRIEF)
    assert first.skeleton is None and first.draft is None
    assert first.reply.count("?") >= 3
    for tailored in ("enterprise VPs of Sales", "time-to-ROI", "proof", "call", "tone"):
        assert tailored in first.reply
    assert "VP of Sales" in first.reply and "Northwind" in first.reply  # grounded on leads

    second = chat.say("Hmm, let me think about it.")
    assert second.skeleton is None and "?" in second.reply

    third = chat.say("We're Acme Analytics. Customers see ROI in 6 weeks.")
    assert third.skeleton is not None and third.draft is not None
    standard_body = third.draft.body
    tone = third.skeleton["tone"]

    fourth = chat.say("make it shorter")
    assert fourth.skeleton is not None and fourth.draft is not None
    assert len(fourth.draft.body) < len(standard_body)
    assert fourth.skeleton["length"] == "short" and "shorter" in fourth.reply

    fifth = chat.say("more formal please")
    assert fifth.skeleton is not None and fifth.draft is not None
    assert fifth.skeleton["tone"] != tone
    assert fifth.draft.body != fourth.draft.body
    assert "tone" in fifth.reply


def test_converges_on_turn_two_when_the_answer_is_enough() -> None:
    chat = Chat()
    chat.say(BRIEF)
    result = chat.say(ANSWER)
    assert result.skeleton is not None and result.draft is not None
    assert "Acme Analytics" in result.draft.body and "6 weeks" in result.draft.body


def test_converges_by_turn_three_even_with_nothing_to_go_on() -> None:
    chat = Chat(sample_leads=())
    assert chat.say("hi").skeleton is None
    assert chat.say("hmm").skeleton is None
    assert chat.say("ok").skeleton is not None


def test_skeleton_shape_and_draft() -> None:
    chat = converged()
    skel, draft = chat.skeleton, run_turn(OfflineEngine(), Chat().input("x")).draft
    assert skel is not None and draft is None
    for key in ("hook", "value_proposition", "call_to_action", "tone", "subject", "body"):
        assert isinstance(skel[key], str) and skel[key]
    assert "&&" in skel["body"] and "%first_name%" in skel["body"]
    assert skel["blocks"]
    for block in skel["blocks"]:
        assert set(block) >= {"name", "instruction", "fields", "approach", "fallback"}
        assert block["fields"] and block["fallback"]
    assert chat.body is not None and chat.subject is not None
    assert "&&" not in chat.body and "%first_name%" in chat.body
    # the example is the framework rendered for the first sample lead
    assert "Northwind" in skel["exampleBody"] and "Dana" in skel["exampleBody"]
    assert variables_in(skel["exampleBody"]) == [] and "&&" not in skel["exampleBody"]
    assert skel["exampleSubject"] == skel["subject"].replace("%company%", "Northwind")


@pytest.mark.parametrize(
    ("message", "check"),
    [
        ("ask for a demo instead", lambda s, d: s["cta_type"] == "demo" and "demo" in d.body),
        ("offer the one-pager instead", lambda s, d: s["cta_type"] == "resource"),
        ("end with: reply with yes", lambda s, d: s["cta_type"] == "reply" and '"yes"' in d.body),
        ("make it longer", lambda s, d: s["length"] == "long" and "P.S." in d.body),
        ("more casual", lambda s, d: s["tone"] == "friendly" and d.body.startswith("Hi ")),
        ("change the subject", lambda s, d: d.subject != "Time-to-ROI for %company%"),
        ('change the subject to "Quick idea"', lambda s, d: d.subject == "Quick idea"),
        ("mention our SOC 2 certification", lambda s, d: "SOC 2 certification" in d.body),
        ("remove the proof point", lambda s, d: "6 weeks" not in d.body),
        ("don't use the company name", lambda s, d: "%company%" not in d.body + d.subject),
        ("Proof: cut forecast prep by 70%", lambda s, d: "70%" in d.body),
        ("focus on forecast accuracy", lambda s, d: "forecast accuracy" in d.body),
    ],
)
def test_refinements(message: str, check: Any) -> None:
    chat = converged()
    before = chat.body
    result = chat.say(message)
    assert result.skeleton is not None and result.draft is not None, result.reply
    assert result.reply.startswith("Done:")
    assert result.draft.body != before or result.draft.subject != "Time-to-ROI for %company%"
    assert check(result.skeleton, result.draft), result.draft


def test_cta_round_trip_and_no_op() -> None:
    chat = converged()
    assert chat.say("ask for a demo").skeleton is not None
    result = chat.say("suggest a call")
    assert result.skeleton is not None and result.skeleton["cta_type"] == "call"
    again = chat.say("suggest a call")
    assert again.skeleton is None and "already" in again.reply


def test_mention_then_remove_it() -> None:
    chat = converged()
    chat.say("mention our SOC 2 certification")
    result = chat.say("remove the SOC 2 bit")
    assert result.draft is not None and "SOC 2" not in result.draft.body


@pytest.mark.parametrize("message", ["what do you think?", "thanks, looks good", "ok"])
def test_non_actionable_turn_answers_without_updating(message: str) -> None:
    chat = converged()
    result = chat.say(message)
    assert result.skeleton is None and result.draft is None
    assert "shorter" in result.reply and "Subject:" in result.reply


def test_no_change_when_already_at_the_limit() -> None:
    chat = converged()
    assert chat.say("shorter").skeleton is not None
    result = chat.say("shorter")
    assert result.skeleton is None and "already" in result.reply


@pytest.mark.parametrize("allowed", [("first_name",), ("company", "position"), ()])
def test_only_allowed_variables(allowed: tuple[str, ...]) -> None:
    chat = converged(available_vars=allowed)
    result = chat.say("make it longer")
    assert chat.skeleton is not None
    for text in template_strings(chat.skeleton, result.draft):
        assert set(variables_in(text)) <= set(allowed), text
    for block in chat.skeleton["blocks"]:
        assert set(block["fields"]) <= set(allowed)
    for name in set(DEFAULT_VAR_NAMES) - set(allowed):
        assert f"%{name}%" not in result.reply


def test_follow_up_acknowledges_earlier_touches() -> None:
    context = {"position": 2, "total_nodes": 3, "prior_nodes": [{"subject": "Time-to-ROI"}]}
    chat = Chat(sequence_context=context)
    first = chat.say(BRIEF)
    assert "email 2 of 3" in first.reply
    chat.say(ANSWER)
    assert chat.subject == "Re: Time-to-ROI"
    assert chat.body is not None
    assert 'following up on my previous email about "Time-to-ROI"' in chat.body
    no_subjects = converged(sequence_context={"position": 3, "prior_nodes": [{"name": "bump"}, 7]})
    assert no_subjects.subject is not None and no_subjects.subject.startswith("Following up:")


def test_foreign_skeleton_is_adopted() -> None:
    chat = Chat(skeleton={"hook": "Open on their hiring spree", "value_prop": "We halve ramp time"})
    chat.history = [Message("user", BRIEF), Message("assistant", "questions")]
    result = chat.say("make it more casual")
    assert result.skeleton is not None and result.draft is not None
    assert result.skeleton["hook"] == "Open on their hiring spree"
    assert "We halve ramp time." in result.draft.body
    assert result.skeleton["brief"]["audience"] == "enterprise VPs of Sales"


def example(chat: Chat, lead: Any, **kwargs: Any) -> Any:
    assert chat.skeleton is not None
    inp = ExampleInput(lead, chat.skeleton, chat.subject, chat.body, **kwargs)
    return asyncio.run(OfflineEngine().example(inp))


def test_example_is_personalised_from_the_lead() -> None:
    chat = converged()
    lead = {
        "lead_id": "l1",
        "first_name": "Ana",
        "company": "Initech",
        "position": "Head of Sales",
        "custom_fields": {"recent_news": "the Series B"},
    }
    out = example(chat, lead)
    assert out.lead_id == "l1" and out.missing == ()
    assert out.subject == "Time-to-ROI for Initech"
    assert out.body.startswith("Hello Ana,") and "the Series B at Initech" in out.body
    assert "&&" not in out.body and variables_in(out.body) == []


@pytest.mark.parametrize(
    "lead",
    [
        {"lead_id": "x"},
        {"id": 5, "first_name": None, "company": ["junk"], "custom_fields": "junk"},
        {"lead_id": "y", "full_name": 3.5, "custom_fields": {1: 2, "news": {"a": 1}}},
        None,
    ],
)
def test_example_never_crashes_on_thin_or_odd_leads(lead: Any) -> None:
    out = example(converged(), lead)
    assert "first_name" in out.missing and "company" in out.missing
    assert out.body.startswith("Hello there,") and "&&" not in out.body


def test_example_from_a_documented_style_skeleton() -> None:
    skeleton = {
        "subject": "Quick thought on %company%'s onboarding",
        "body": "Hi {{first_name}},\n\n&&2-sentence pain hook tied to %position%.&&\n\n"
        "We run onboarding for %industry% teams.\n\n%sender_first%",
        "blocks": [{"name": "Opener", "personalization": {"fields": ["position", "company"]}}],
    }
    lead: dict[str, Any] = {"id": "7", "first_name": "Bo", "company": "Umbrella"}
    lead.update(position="COO", custom_fields={"industry": "biotech"})
    inp = ExampleInput(lead, skeleton, None, None)
    out = asyncio.run(OfflineEngine().example(inp))
    assert out.lead_id == "7" and out.subject == "Quick thought on Umbrella's onboarding"
    assert "Hi Bo," in out.body and "biotech" in out.body and "Umbrella" in out.body
    assert out.missing == ("sender_first",)


def test_turn_yields_to_the_event_loop() -> None:
    async def scenario() -> int:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        async for _ in OfflineEngine(pace_ms=0).turn(Chat().input(BRIEF)):
            pass
        done.set()
        await task
        return ticks

    assert asyncio.run(scenario()) > 10


def test_a_timed_out_next_loses_nothing() -> None:
    """The run engine times out ``__anext__`` while coalescing; the reply must survive it."""

    async def scenario() -> str:
        stream = OfflineEngine(pace_ms=2).turn(Chat().input(BRIEF)).__aiter__()
        text: list[str] = []
        attempt = 0
        while True:
            attempt += 1
            try:
                timeout = 0.0005 if attempt % 2 else None
                item = await asyncio.wait_for(stream.__anext__(), timeout=timeout)
            except TimeoutError:
                continue
            except StopAsyncIteration:
                return "".join(text)
            if isinstance(item, TextDelta):
                text.append(item.text)

    assert asyncio.run(scenario()) == respond(Chat().input(BRIEF))[0]


messages = st.sampled_from(
    [
        BRIEF, ANSWER, "make it shorter", "longer", "more formal", "more casual", "ask for a demo",
        "reply with yes", "change the subject", "mention our free pilot", "remove the proof",
        "don't use their first name", "thanks", "what now?", "", "%company% {{x}} &&y&&",
    ]
)  # fmt: skip
stages = st.sampled_from(["first", "second", "converged"])
var_pool = [*DEFAULT_VAR_NAMES, "headline", "industry", "sender_first"]


def staged(stage: str, allowed: tuple[str, ...]) -> Chat:
    chat = Chat(available_vars=allowed)
    if stage != "first":
        chat.say(BRIEF)
    if stage == "converged":
        chat.say(ANSWER)
    return chat


@settings(max_examples=60, deadline=None)
@given(stages, messages | st.text(max_size=80))
def test_deltas_are_words_that_concatenate_to_the_reply(stage: str, message: str) -> None:
    inp = staged(stage, DEFAULT_VAR_NAMES).input(message)
    result = run_turn(OfflineEngine(), inp)
    assert result.reply == respond(inp)[0] and result.reply
    assert all(re.fullmatch(r"\s+|\S+\s*", d) for d in result.deltas)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(var_pool), unique=True), st.lists(messages, max_size=3))
def test_never_emits_disallowed_variables(allowed: list[str], script: list[str]) -> None:
    chat = Chat(available_vars=tuple(allowed))
    for message in [BRIEF, ANSWER, *script]:
        result = chat.say(message)
        if result.skeleton is not None:
            for text in template_strings(result.skeleton, result.draft):
                assert set(variables_in(text)) <= set(allowed), text
            for block in result.skeleton["blocks"]:
                assert set(block["fields"]) <= set(allowed)


@settings(max_examples=40, deadline=None)
@given(stages, messages | st.text(max_size=80), st.lists(st.sampled_from(var_pool), unique=True))
def test_same_input_same_output(stage: str, message: str, allowed: list[str]) -> None:
    inp = staged(stage, tuple(allowed)).input(message)
    first, second = run_turn(OfflineEngine(), inp), run_turn(OfflineEngine(), inp)
    assert first == second
