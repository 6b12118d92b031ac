"""The offline engine's conversation rules: which questions to ask, when the brief is
complete enough to draft, and how a later message changes a framework.

Pure functions of the turn's text and the skeleton (the engine's only memory), so a
rollback or a hand-PATCHed skeleton is simply what the next turn starts from.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from sessionstream.engines.brief import (
    _ANGLE,
    _BRIEF_KEYS,
    _CTA_CUE,
    _GENERIC,
    _I,
    _LONGER,
    _MENTION,
    _REMOVE,
    _SECTIONS,
    _SHORTER,
    _SUBJECT_EOL,
    _SUBJECT_QUOTED,
    _VAR_WORDS,
    CTA_TYPES,
    LENGTHS,
    TONES,
    _audience,
    _clean,
    _cta_kind,
    _extract,
    _int,
    _labels,
    _merge,
    _Plan,
    _proof,
    _Seq,
    _tone_of,
    _tone_word,
)
from sessionstream.engines.framework import (
    _earlier,
)
from sessionstream.engines.templates import (
    lead_value,
)

# the conversation ----------------------------------------------------------------------


def _topics(facts: _Plan, seq: _Seq, leads: list[dict[str, Any]]) -> list[str]:
    """What to ask on turn 1; the order also maps numbered answers back to topics."""
    topics = [
        t
        for t, known in (
            ("sender", facts.sender and facts.offer),
            ("audience", facts.audience or leads),
            ("proof", facts.proof),
            ("cta", facts.cta),
            ("tone", facts.tone),
        )
        if not known
    ]
    topics += ["prior"] if seq.follow else []
    return [*topics, "avoid"] if len(topics) < 2 else topics[:5]


def _question(topic: str, facts: _Plan, seq: _Seq) -> str:
    reader = facts.audience or "the reader"
    if topic == "sender" and facts.sender:
        return f"What does {facts.sender} offer {reader}, in one line?"
    if topic == "sender":
        what = f"what makes your {facts.offer} different" if facts.offer else "what do you offer"
        return f"Who is sending this (your name and company), and {what}?"
    if topic == "audience":
        return "Who exactly is this for: which roles, at what kind of company?"
    if topic == "proof" and facts.angle:
        return (
            f"What proof do you have for {facts.angle}? A customer result with a number "
            "(payback in N weeks, a % uplift) makes the claim credible."
        )
    if topic == "proof":
        return "What's your strongest proof point, ideally a customer result with a number?"
    if topic == "cta":
        return f'What should {reader} do next: book a short call, see a demo, or just reply "yes"?'
    if topic == "tone":
        hint = (
            " (for senior buyers I'd default to professional)"
            if _tone_of(facts) == "professional"
            else ""
        )
        return f"What tone fits {reader}: crisp and professional, or warmer and casual{hint}?"
    if topic == "prior":
        return (
            f"This is email {seq.position} of {seq.total}: anything from the earlier "
            f"email{_earlier(seq)} to build on, or a new angle to add?"
        )
    return "Anything to avoid, or a detail you definitely want mentioned?"


def _kind_phrase(facts: _Plan, seq: _Seq) -> str:
    kind = facts.kind or ("follow-up" if seq.follow else "intro")
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} email"


def _leads_line(leads: list[dict[str, Any]]) -> str:
    positions = [p for p in (lead_value(x, "position") for x in leads) if p]
    companies = list(dict.fromkeys(c for c in (lead_value(x, "company") for x in leads) if c))
    if not positions and not companies:
        return ""
    top = max(dict.fromkeys(positions), key=positions.count) if positions else ""
    where = f" at companies like {' and '.join(companies[:2])}" if companies else ""
    who = f"mostly {top}" if top else "people"
    return f"Your sample leads are {who}{where}, so I'll pitch it at that level. "


def _ask(facts: _Plan, topics: list[str], seq: _Seq, leads: list[dict[str, Any]]) -> str:
    about = (
        (f" for {facts.audience}" if facts.audience else "")
        + (f" about your {facts.offer}" if facts.offer else "")
        + (f", built around {facts.angle}" if facts.angle else "")
    )
    follow = (
        (
            f"Since this is email {seq.position} of {seq.total}, it will read as a follow-up "
            "to the earlier touch. "
        )
        if seq.follow
        else ""
    )
    questions = "\n".join(f"{i}. {_question(t, facts, seq)}" for i, t in enumerate(topics, 1))
    return (
        f"Happy to help with {_kind_phrase(facts, seq)}{about}. {_leads_line(leads)}{follow}"
        f"A few questions before I draft the framework:\n\n{questions}\n\nAnswer what you "
        "can (numbered answers are fine); I'll fill any gaps with sensible defaults."
    )


def _ask_again(facts: _Plan, seq: _Seq) -> str:
    open_topics = [t for t in _topics(facts, seq, [{}]) if t in ("sender", "proof", "cta")][:2]
    questions = " ".join(_question(t, facts, seq) for t in open_topics)
    return (
        f"Thanks, that helps. Before I draft, {questions[:1].lower()}{questions[1:]} "
        'Or just say "go ahead" and I\'ll use sensible defaults.'
    )


def _words(text: str) -> int:
    return len(text.split())


def _describe(skeleton: dict[str, Any], body: str, before: str = "") -> str:
    count = f"{_words(body)} words"
    if before and _words(before) != _words(body):
        count += f", was {_words(before)}"
    return (
        f"- Subject: {skeleton['subject']}\n- Hook: {skeleton['hook']}\n"
        f"- Value proposition: {skeleton['value_proposition']}\n"
        f"- Call to action: {skeleton['call_to_action']}\n"
        f"- Tone: {skeleton['tone']}, {skeleton['length']} length ({count})"
    )


def _converged(
    plan: _Plan,
    facts: _Plan,
    skeleton: dict[str, Any],
    body: str,
    seq: _Seq,
    leads: list[dict[str, Any]],
) -> str:
    to = f" to {plan.audience}" if plan.audience else ""
    where = f" (email {seq.position} of {seq.total})" if seq.follow else ""
    parts = [
        f"Here's the framework for {_kind_phrase(plan, seq)}{to}{where}:\n\n"
        f"{_describe(skeleton, body)}"
    ]
    if skeleton["blocks"]:
        used = ", ".join(f"%{f}%" for f in skeleton["blocks"][0]["fields"]) or "the lead's details"
        parts.append(
            f"- Personalisation: the opener uses {used}, with a generic line as the "
            "fallback when a lead lacks them"
        )
    if leads:
        who = lead_value(leads[0], "full_name") or "your first sample lead"
        role = " at ".join(
            x for x in (lead_value(leads[0], k) for k in ("position", "company")) if x
        )
        who += f" ({role})" if role else ""
        parts.append(
            f"\nGrounded on your sample leads: for {who} the subject reads "
            f'"{skeleton["exampleSubject"]}" (full example in the framework).'
        )
    assumed = [
        text
        for known, text in (
            (facts.sender, 'a generic "we" as the sender'),
            (facts.cta, "a 15-minute call as the ask"),
            (facts.tone, f"a {skeleton['tone']} tone"),
            (facts.proof, "no proof point (send me a customer result and I'll add it)"),
        )
        if not known
    ]
    if assumed:
        parts.append(f"\nI assumed {', '.join(assumed)}.")
    parts.append("\nWant it shorter, more formal, or with a different call to action?")
    return "\n".join(parts)


def _from_skeleton(skel: dict[str, Any], earlier: list[str]) -> _Plan:
    """Read the plan back from a skeleton; a foreign one is rebuilt from the chat so far."""
    brief = skel.get("brief")
    if isinstance(brief, dict):
        given: dict[str, Any] = {k: _clean(brief.get(k)) for k in _BRIEF_KEYS}
        plan = replace(_Plan(), **given)
    else:
        plan = _Plan()
        for text in earlier:
            plan = _merge(plan, _extract(text))
        value = skel.get("value_proposition") or skel.get("value_prop")
        plan = replace(plan, hook_text=_clean(skel.get("hook"), 300), value_text=_clean(value, 300))
    lists: dict[str, list[Any]] = {}
    for key in ("mentions", "omit", "excluded_vars"):
        value = skel.get(key)
        lists[key] = value if isinstance(value, list) else []
    cta = skel.get("cta_type") or _cta_kind(str(skel.get("call_to_action") or ""))
    tone = skel.get("tone") if skel.get("tone") in TONES else _tone_word(str(skel.get("tone")))
    return replace(
        plan,
        cta=cta if cta in CTA_TYPES else plan.cta,
        tone=tone or plan.tone,
        length=str(skel["length"]) if skel.get("length") in LENGTHS else plan.length,
        mentions=tuple(m for m in map(_clean, lists["mentions"]) if m)[:10],
        omit=tuple(x for x in lists["omit"] if x in _SECTIONS),
        excluded=tuple(x for x in lists["excluded_vars"] if isinstance(x, str)),
        subject_variant=_int(skel.get("subject_variant"), 0) % 3,
        custom_subject=_clean(skel.get("custom_subject"), 120),
    )


def _named(target: str) -> tuple[str, str]:
    """("section", name) or ("var", name) for what a user asked to add or remove."""
    target = re.sub(r"^(the|their|a|an|any|that|lead'?s)\s+", "", target.lower().strip())
    for section, pattern in _SECTIONS.items():
        if re.fullmatch(pattern, target):
            return "section", section
    return ("var", _VAR_WORDS[target]) if target in _VAR_WORDS else ("", "")


def _overlaps(target: str, mention: str) -> bool:
    """Whether "remove the SOC 2 bit" refers to the mention "our SOC 2 certification"."""
    filler = {"the", "our", "a", "an", "of", "that", "about", "mention", "line", "bit", "part"}
    words = set(re.findall(r"\w+", target.lower())) - filler
    return bool(words & set(re.findall(r"\w+", mention.lower())))


def _step(options: tuple[str, ...], current: str, delta: int) -> str:
    return options[max(0, min(len(options) - 1, options.index(current) + delta))]


def _tone_change(text: str, current: str) -> str:
    m = re.search(
        r"\b(more|less|too)?\s*(formal|professional|polished|serious|stiff|corporate|"
        r"casual|informal|relaxed|chatty|friendly|friendlier|warm|warmer|"
        r"conversational)\b",
        text,
        _I,
    )
    if not m:
        return current
    mod, word = (m.group(1) or "").lower(), m.group(2).lower()
    up = word in ("formal", "professional", "polished", "serious", "stiff", "corporate")
    if mod or word in ("friendlier", "warmer"):
        return _step(TONES, current, (1 if up else -1) * (-1 if mod in ("less", "too") else 1))
    return _tone_word(word) or current


def _apply(plan: _Plan, message: str) -> tuple[_Plan, list[str], list[str]]:
    """Apply the changes a user asked for: the new plan, what changed, and notes."""
    rest, changes, notes = message[:4000], [], []
    m = _SUBJECT_QUOTED.search(rest) or _SUBJECT_EOL.search(rest)
    if m and _clean(m.group(1), 120) and not _GENERIC.match(m.group(1)):
        plan = replace(plan, custom_subject=_clean(m.group(1), 120))
        changes.append(f'set the subject to "{plan.custom_subject}"')
        rest = rest[: m.start()] + " " + rest[m.end() :]
    elif re.search(r"\bsubject\b", rest, _I) and re.search(
        r"\b(change|different|new|another|better|rewrite|try|punchier|fresh|other|swap)\b", rest, _I
    ):
        plan = replace(plan, subject_variant=(plan.subject_variant + 1) % 3, custom_subject="")
        changes.append("tried a different subject line")
    for m in _MENTION.finditer(rest):
        what, name = _named(m.group(1))
        item = _clean(m.group(1), 140)
        if what == "var" and name in plan.excluded:
            plan = replace(plan, excluded=tuple(x for x in plan.excluded if x != name))
            changes.append(f"brought back %{name}%")
        elif what == "section" and name in plan.omit:
            plan = replace(plan, omit=tuple(x for x in plan.omit if x != name))
            changes.append(f"restored the {name}")
        elif not what and item and item not in plan.mentions:
            plan = replace(plan, mentions=(*plan.mentions, item))
            changes.append(f'added a mention of "{item}"')
    rest = _MENTION.sub(" ", rest)
    for m in _REMOVE.finditer(rest):
        target = _clean(m.group(1), 80)
        what, name = _named(target)
        hits = [x for x in plan.mentions if _overlaps(target, x)]
        if target.lower() in ("it", "it down", "that", "this"):
            continue
        if what == "section":
            if name not in plan.omit:
                plan = replace(plan, omit=(*plan.omit, name))
                changes.append(
                    f"removed the {dict(ps='P.S.', proof='proof point').get(name, name)}"
                )
        elif what == "var":
            if name not in plan.excluded:
                plan = replace(plan, excluded=(*plan.excluded, name))
                changes.append(f"stopped using %{name}%")
        elif hits:
            plan = replace(plan, mentions=tuple(x for x in plan.mentions if x not in hits))
            changes.append(f'removed the mention of "{hits[0]}"')
        else:
            notes.append(f'I couldn\'t find "{target}" in the draft, so nothing was removed.')
    rest = _REMOVE.sub(" ", rest)
    length = plan.length if plan.length in LENGTHS else "standard"
    for pattern, delta, word in ((_SHORTER, -1, "shorter"), (_LONGER, 1, "longer")):
        if pattern.search(rest):
            new = _step(LENGTHS, length, delta)
            if new == length:
                notes.append(f"It's already the {length} version; I can't make it any {word}.")
            else:
                plan = replace(plan, length=new)
                changes.append(f"made it {word} ({new} version)")
            break
    tone = _tone_of(plan)
    new_tone = _tone_change(rest, tone)
    if new_tone != tone:
        plan = replace(plan, tone=new_tone)
        changes.append(f"changed the tone from {tone} to {new_tone}")
    elif re.search(r"\b(more|less) (formal|casual|friendly|professional)\b", rest, _I):
        notes.append(f"The tone is already as far as it goes ({tone}).")
    cta = _cta_kind(rest)
    if cta and (_CTA_CUE.search(rest) or len(rest.split()) <= 6):
        if cta == (plan.cta or "call"):
            notes.append(f"The call to action already asks for a {cta}.")
        else:
            plan = replace(plan, cta=cta)
            changes.append(f"switched the call to action to {'a ' if cta != 'reply' else ''}{cta}")
    labels = _labels(rest, None)
    if m := _ANGLE.search(rest):
        labels.setdefault("angle", _clean(m.group(1), 80))
    if re.search(r"\b(target|audience|aim|instead|write (?:it |this )?for)\b", rest, _I):
        labels.setdefault("audience", _audience(rest))
    if re.search(r"\b(proof|case study|result|stat|data point)\b", rest, _I):
        labels.setdefault("proof", _proof(rest))
    for key in ("audience", "offer", "angle", "sender", "sender_name", "proof"):
        if labels.get(key) and labels[key] != getattr(plan, key):
            update: dict[str, Any] = {key: labels[key]}
            plan = replace(plan, **update)
            changes.append(f'set the {key.replace("_", " ")} to "{labels[key]}"')
    return plan, changes, notes
