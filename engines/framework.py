"""Composing a framework and per-lead examples from a ``_Plan``.

Everything the offline engine writes (skeleton, draft, examples) is built here,
with only the turn's allowed template variables.
"""

from __future__ import annotations

import re
from typing import Any

from sessionstream.engines.brief import (
    _BRIEF_KEYS,
    _TRIGGER_KEYS,
    CTA_TYPES,
    LENGTHS,
    TONES,
    _allowed,
    _article,
    _cap,
    _clean,
    _Plan,
    _Seq,
    _stable,
    _tone_of,
)
from sessionstream.engines.templates import (
    STANDARD_FIELDS,
    clean_value,
    fill_blocks,
    lead_value,
    render,
    restrict_to,
)

# composing the framework -------------------------------------------------------------

# Calls to action by type, then tone (casual, friendly, professional, formal); {co} is the
# company variable (or "your team"). The short versions are what "make it shorter" buys.
_CTAS = {
    "call": (
        "Up for a quick 15-minute chat next week?",
        "Open to a 15-minute call next week to see if this fits {co}?",
        "Would you be open to a 15-minute call next week to explore whether this fits {co}?",
        "Would you be available for a brief call next week to discuss whether this would be "
        "of value to {co}?",
    ),
    "demo": (
        "Want me to show you a quick demo?",
        "Would a short demo be useful? Happy to tailor it to {co}.",
        "Could I show you a 20-minute demo tailored to {co}?",
        "May I arrange a short demonstration tailored to {co}?",
    ),
    "reply": (
        'If that sounds useful, just reply "yes" and I\'ll send details.',
        "If it's worth a look, just reply \"yes\" and I'll send over the details.",
        'If this is relevant, simply reply "yes" and I will share the details.',
        'Should this be of interest, a reply of "yes" is all I need to send the details.',
    ),
    "resource": (
        "Want me to send over a one-page overview?",
        "Would a one-page overview be useful? Happy to send it over.",
        "Would it help if I sent a one-page overview tailored to {co}?",
        "May I send you a one-page overview prepared for {co}?",
    ),
}
_SHORT_CTAS = {
    "call": (
        "Quick chat next week?",
        "Worth a quick call next week?",
        "Open to a brief call next week?",
        "Might we speak briefly next week?",
    ),
    "demo": (
        "Quick demo?",
        "Worth a quick demo?",
        "Open to a short demo?",
        "May I show you a short demonstration?",
    ),
    "reply": (
        'Reply "yes" for details.',
        'Just reply "yes" for details.',
        'Reply "yes" and I will share details.',
        'A reply of "yes" will suffice.',
    ),
    "resource": (
        "Want the one-pager?",
        "Shall I send a one-pager?",
        "Shall I send a one-page overview?",
        "May I send a one-page overview?",
    ),
}


def _subject(plan: _Plan, allowed: list[str], seq: _Seq, angle: str, formal: bool) -> str:
    if plan.custom_subject:
        return plan.custom_subject
    company = "%company%" if "company" in allowed else ""
    first = "%first_name%" if "first_name" in allowed else ""
    options = [
        f"{_cap(angle)} for {company}" if company else f"{_cap(angle)}, without the long rollout",
        f"Quick question, {first}" if first and not formal else f"A question about {angle}",
        f"{plan.sender} x {company}"
        if plan.sender and company
        else f"An idea for {company or 'your team'}",
    ]
    base = options[plan.subject_variant % len(options)]
    if seq.follow and seq.prior and plan.subject_variant == 0:
        return f"Re: {seq.prior[-1]}"
    return f"Following up: {base}" if seq.follow else base


def _blocks(
    plan: _Plan, allowed: list[str], seq: _Seq, angle: str, tone: str, long: bool
) -> list[dict[str, Any]]:
    """Per-lead personalisation points, each with a %var% fallback sentence for the draft."""
    formal = tone in ("professional", "formal")
    company = "%company%" if "company" in allowed else ""
    role = "%position%" if "position" in allowed else ""
    at = f" at {company}" if company else ""
    custom = [n for n in allowed if n not in STANDARD_FIELDS and not n.startswith("sender")]
    out: list[dict[str, Any]] = []
    if "opener" not in plan.omit:
        if role:
            lead_in = f"As {role}{at}, " + (
                "you are likely expected to demonstrate"
                if formal
                else "you're probably asked to show"
            )
        else:
            lead_in = "Teams like yours " + (
                "are likely expected to demonstrate" if formal else "are probably asked to show"
            )
        what = "adding a new angle for" if seq.follow else "linking"
        whose = role or "the lead's role"
        out.append(
            {
                "name": "Opener",
                "instruction": f"One sentence {what} {whose}{at} to {angle}; "
                "use their headline or custom fields if present, no flattery.",
                "fields": [
                    f for f in ("first_name", "position", "company", "headline") if f in allowed
                ]
                + custom,
                "approach": f"single line grounded in the lead's role and company, {tone} tone",
                "fallback": f"{lead_in} {angle} {'early' if formal else 'sooner than planned'}.",
            }
        )
    if long:
        out.append(
            {
                "name": "Relevance",
                "instruction": f"One sentence on why {angle} matters for "
                f"{company or 'their team'} right now.",
                "fields": [f for f in ("company", "headline") if f in allowed] + custom,
                "approach": "tie the value to a likely current priority; no invented facts",
                "fallback": f"For {company or 'teams like yours'}, {angle} is often what decides "
                "whether a new tool gets past the pilot.",
            }
        )
    return out


def _compose(
    plan: _Plan, names: Any, seq: _Seq, leads: list[dict[str, Any]]
) -> tuple[dict[str, Any], str, str]:
    """Build the skeleton and the draft from a plan; the only place copy is written."""
    allowed = _allowed(plan, names)
    tone = _tone_of(plan)
    length = plan.length if plan.length in LENGTHS else "standard"
    t, formal = TONES.index(tone), tone in ("professional", "formal")
    angle = plan.angle or "faster results"
    cta = plan.cta if plan.cta in CTA_TYPES else "call"
    company = "%company%" if "company" in allowed else ""
    first = "%first_name%" if "first_name" in allowed else ""
    if first and t == 3 and "last_name" in allowed:
        first += " %last_name%"
    greet = ("Hey", "Hi", "Hello", "Dear")[t] + (
        f" {first}," if first else (" there,", " there,", ",", " Sir or Madam,")[t]
    )
    sign = ("Cheers,", "Best,", "Best regards,", "Kind regards,")[t]
    name = plan.sender_name or next(
        (f"%{n}%" for n in ("sender_first", "sender_name") if n in allowed), ""
    )
    sign += (f"\n{name}" if name else "") + (f"\n{plan.sender}" if plan.sender and formal else "")
    blocks = _blocks(plan, allowed, seq, angle, tone, length == "long")
    we = f"At {plan.sender}, we" if plan.sender else "We"
    peers = plan.audience or "teams like yours"
    offer = f"{_article(plan.offer)} {plan.offer}" if plan.offer else ""
    if plan.value_text:
        value = plan.value_text.rstrip(".") + "."
    else:
        if offer and formal:
            value = f"{we} have developed {offer} for {plan.audience or 'organisations like yours'}"
            value += f", designed around {angle}"
        elif offer:
            value = f"{we} built {offer} for {peers}, designed around {angle}"
        else:
            value = f"{we} help {peers} with {angle}"
        value += (
            "."
            if length == "short"
            else (
                ", so the benefits become visible early rather than after a lengthy implementation."
                if formal
                else ", so the payoff shows up early instead of after a long rollout."
            )
        )
    extras = []
    if plan.proof and "proof" not in plan.omit:
        extras.append(f"{'For reference' if formal else 'One data point'}: {plan.proof}.")
    lead_in = "I would also like to mention" if formal else "Also worth mentioning:"
    extras += [f"{lead_in} {m}." for m in plan.mentions]
    if length == "long":
        extras.append(
            f"In practice, that means {plan.offer or 'the work'} running inside your "
            "existing process within weeks, with your team involved only where it "
            "matters."
        )
    cta_text = (_SHORT_CTAS if length == "short" else _CTAS)[cta][t].format(
        co=company or "your team"
    )
    follow = ""
    if seq.follow:
        about = f' about "{seq.prior[-1]}"' if seq.prior else ""
        follow = (
            f"I am following up on my previous email{about}."
            if formal
            else (f"Following up on my note{about}.")
        )
        if seq.position >= seq.total >= 3:
            follow += " This will be my last note on this." if formal else " Last note from me."
    ps = ""
    if length == "long" and "ps" not in plan.omit:
        ps = (
            f"P.S. Should the timing not be right, I would be glad to share how comparable "
            f"teams approached {angle}."
            if formal
            else f"P.S. Even if the timing is off, happy to send over how similar teams "
            f"approached {angle}."
        )
    first_para = " ".join([follow, *(f"&&{b['instruction']}&&" for b in blocks)]).strip()
    paras = (greet, first_para, " ".join([value, *extras]), cta_text, sign, ps)
    hook = plan.hook_text or (
        (f"Acknowledge the earlier email{_earlier(seq)}, then " if seq.follow else "")
        + (
            f"a one-line opener tying the lead's role{' and company' if company else ''} to {angle}"
            if "opener" not in plan.omit
            else "go straight to the value proposition"
        )
    )
    brief = {k: getattr(plan, k) for k in _BRIEF_KEYS}
    brief["kind"] = plan.kind or ("follow-up" if seq.follow else "intro")
    skeleton: dict[str, Any] = {
        "hook": hook,
        "value_proposition": value,
        "call_to_action": cta_text,
        "cta_type": cta,
        "tone": tone,
        "length": length,
        "brief": brief,
        "mentions": list(plan.mentions),
        "omit": list(plan.omit),
        "excluded_vars": list(plan.excluded),
        "subject_variant": plan.subject_variant,
        "custom_subject": plan.custom_subject,
        "subject": _subject(plan, allowed, seq, angle, formal),
        "body": "\n\n".join(p for p in paras if p),
        "blocks": blocks,
    }
    if seq.follow:
        skeleton["sequence"] = {"position": seq.position, "total_nodes": seq.total}
    skeleton = _restrict(skeleton, allowed)
    fallbacks = [b["fallback"] for b in skeleton["blocks"]]
    draft = restrict_to(fill_blocks(skeleton["body"], lambda i, _: fallbacks[i]), allowed)
    lead = leads[0] if leads else _ILLUSTRATIVE_LEAD
    ex_subject, ex_body, _ = _personalise(skeleton, skeleton["subject"], skeleton["body"], lead)
    skeleton["exampleSubject"], skeleton["exampleBody"] = ex_subject, ex_body
    return skeleton, skeleton["subject"], draft


_ILLUSTRATIVE_LEAD: dict[str, Any] = {
    "lead_id": "example",
    "first_name": "Alex",
    "last_name": "Rivera",
    "company": "Northwind",
    "position": "Head of Operations",
}


def _earlier(seq: _Seq) -> str:
    return f' ("{(seq.prior or seq.names)[-1]}")' if seq.prior or seq.names else ""


def _restrict(value: Any, allowed: list[str]) -> Any:
    """Apply ``restrict_to`` to every string of a skeleton, so no field leaks a variable."""
    if isinstance(value, str):
        return restrict_to(value, allowed)
    if isinstance(value, list):
        return [_restrict(x, allowed) for x in value]
    if isinstance(value, dict):
        return {k: (x if k == "fields" else _restrict(x, allowed)) for k, x in value.items()}
    return value


# per-lead examples ---------------------------------------------------------------------


def _block_text(
    block: dict[str, Any], instruction: str, lead: dict[str, Any], angle: str, formal: bool
) -> tuple[str, list[str]]:
    """Lead-grounded text for one block, and the wanted fields the lead lacked.

    A lead with nothing usable gets a generic line rather than the %var% fallback, which
    would read "As your role at your team" once its variables fall back too.
    """
    raw = block.get("fields")
    if raw is None and isinstance(block.get("personalization"), dict):
        raw = block["personalization"].get("fields")
    wanted = [f for f in raw if isinstance(f, str)] if isinstance(raw, list) else []

    def get(name: str) -> str:
        return (lead_value(lead, name) or "") if not wanted or name in wanted else ""

    pos, co, head = get("position"), get("company"), get("headline")
    lacking = [
        f
        for f in wanted or ["position", "company"]
        if f in ("position", "company", "headline") and not lead_value(lead, f)
    ]
    custom = lead.get("custom_fields")
    trigger = ""
    if isinstance(custom, dict):
        for key in sorted((k for k in custom if isinstance(k, str)), key=str.lower):
            if _TRIGGER_KEYS.search(key) and (value := _clean(clean_value(custom[key]), 120)):
                trigger = value
                break
    kind = f"{block.get('name', '')} {instruction}".lower()
    if re.search(r"relevan|why|pain|priorit", kind):
        if not co:
            return (
                f"{_cap(angle)} is often what decides whether a new tool gets past the pilot.",
                lacking,
            )
        verb = "succeeds" if formal else "sticks"
        return f"For {co}, {angle} is usually what decides whether a new initiative {verb}.", []
    if trigger:
        where = f" at {co}" if co else ""
        return f"I noticed {trigger}{where}, which tends to put {angle} on the agenda.", []
    if head and head != pos:
        return f'Your headline ("{head}") suggests {angle} is close to your day-to-day.', []
    key = str(lead.get("lead_id") or lead.get("id") or lead_value(lead, "full_name") or "")
    if pos and co and _stable(key, 2):
        text = f"With {co} growing, {angle} is likely high on your list as {_article(pos)} {pos}."
    elif pos:
        you = "you are likely" if formal else "you're probably"
        where = f" at {co}" if co else ""
        text = f"As {_article(pos)} {pos}{where}, {you} the one asked to show {angle} early."
    elif co:
        text = f"Teams at {co} are usually asked to show {angle} sooner than planned."
    else:
        return (
            f"Most teams I speak with are being asked to show {angle} sooner than planned.",
            lacking,
        )
    return text, []


def _personalise(
    skeleton: dict[str, Any], subject_t: str, body_t: str, lead: dict[str, Any]
) -> tuple[str, str, tuple[str, ...]]:
    """One example: each block becomes lead-grounded text, variables come from the lead.

    Blocks are swapped for placeholders until rendering is done, so a lead value that
    looks like ``%x%`` is never expanded.
    """
    raw = skeleton.get("blocks")
    blocks = [b if isinstance(b, dict) else {} for b in raw] if isinstance(raw, list) else []
    brief = skeleton.get("brief")
    angle = (_clean(brief.get("angle"), 80) if isinstance(brief, dict) else "") or "faster results"
    formal = skeleton.get("tone") in ("professional", "formal")
    texts: list[str] = []
    missing: list[str] = []

    def fill(i: int, instruction: str) -> str:
        text, lacking = _block_text(
            blocks[i] if i < len(blocks) else {}, instruction, lead, angle, formal
        )
        texts.append(text)
        missing.extend(lacking)
        return f"\x01{len(texts) - 1}\x02"

    subject = render(fill_blocks(subject_t, lambda i, s: ""), lead)
    body = render(fill_blocks(body_t, fill), lead)
    text = re.sub(r"\x01(\d+)\x02", lambda m: texts[int(m.group(1))], body.text)
    text = re.sub(r"[ \t]+\n", "\n", re.sub(r"[ \t]{2,}", " ", text)).strip()
    found = tuple(dict.fromkeys([*subject.missing, *body.missing, *missing]))
    return " ".join(subject.text.split()), text, found
