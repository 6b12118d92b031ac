"""Reading a brief: the facts the offline engine pulls out of what the user wrote.

Pure parsing (regular expressions over one message at a time) into a ``_Plan``;
no composition happens here, so each can be tested and changed alone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from sessionstream.engines.templates import (
    IDENT_RE,
)

TONES = ("casual", "friendly", "professional", "formal")
LENGTHS = ("short", "standard", "long")
CTA_TYPES = ("call", "demo", "reply", "resource")
_I = re.IGNORECASE
_WORD = re.compile(r"\s+|\S+\s*")
_PHRASE = r"([\w'&/+-]+(?:[ \t]+[\w'&/+-]+){0,7}?)"
_END = r"(?=\s*(?:[,.;:!?()\n]|$|\s(?:that|which|so|to|for|but|and we|because)\b))"
_STOP_WORDS = (
    r"emphasi[sz]ing|focus\w*|highlighting|stressing|about|around|that|who|which|with|so|to|"
    r"and|using|explaining|showing|but"
)
_STOP = rf"(?=\s*(?:[,.;:!?()\n]|$|\s(?:{_STOP_WORDS})\b))"
_ROLES = re.compile(
    r"\b(s?vps?|heads?|directors?|managers?|chiefs?|c[etfmors]os?|founders?|leaders?|teams?|"
    r"owners?|engineers?|marketers?|recruiters?|executives?|officers?|buyers?|reps?|admins?|"
    r"developers?|professionals?|companies|startups?|agencies|smbs?|enterprises?|brands?|"
    r"partners?|ops|revops|people|decision[- ]makers?|presidents?|clinics?)\b",
    _I,
)
# lookaheads, so "for our app for clinic managers" is tried at every "for", not just the first
_AUDIENCE = re.compile(
    rf"(?=(?i:\b(?:for|targeting|target|aimed at|aim at|to reach|audience is)\s+){_PHRASE}{_STOP})"
)
_OFFER = re.compile(
    r"(?i:\b(?:we (?:sell|offer|provide|make|build|built|run)|our (?:product|platform|tool|"
    r"service|solution) is|selling|promoting|introducing|pitching|launching|about|for)\s+"
    rf"(?:an? |the |our |my )?){_PHRASE}(?=\s*(?:[,.;:!?()\n]|$|\s(?:{_STOP_WORDS}|for)\b))"
)
_OFFER_NOUN = re.compile(
    r"\b(platform|tool|app|software|service|product|solution|api|system|suite|course|program|"
    r"crm|agency|consulting|plugin|integration)s?\b",
    _I,
)
_ANGLE = re.compile(
    r"(?i:\b(?:emphasi[sz]ing|emphasi[sz]e|focus(?:ing|ed)? on|highlighting|highlight|"
    rf"stressing|lead(?:ing)? with|angle(?: is)?:?)\s+(?:the |our )?){_PHRASE}{_END}"
)
_SENDER = re.compile(
    r"(?i:\b(?:we(?:'| a)re|i(?:'m| am) (?:with|at|from)|i work (?:at|for)|our company is|"
    r"company(?: name)? is|on behalf of)\s+)"
    # a '.' belongs to a name only inside it (Acme.io), never at a sentence's end
    r"([A-Z](?:[\w&'-]|\.(?=\w))*(?:\s+[A-Z](?:[\w&'-]|\.(?=\w))*){0,3})"
)
_SENDER_NAME = re.compile(
    r"(?i:\b(?:my name is|sign(?: it| off)? (?:as|with)|signed by)\s+)"
    r"([A-Z][a-z]+(?: [A-Z][a-z]+)?)"
)
_PROOF_NUM = re.compile(
    r"\d+(?:\.\d+)?\s*(?:%|x\b|percent|weeks?\b|days?\b|months?\b|hours?\b)|\$\s?\d", _I
)
_PROOF_WORD = re.compile(
    r"\b(case study|customers? (?:like|such as|see|saw|got)|clients? (?:like|see|saw)|helped|"
    r"saved|reduced|increased|grew|boosted|trusted by|used by)\b",
    _I,
)
_CTA_WORD = re.compile(r"\b(call|chat|meeting|demo|calendar|book|reply)\b", _I)
_LABEL = re.compile(
    r"^\s*(?:[-*]\s*)?(company|sender|from|product|offer|audience|target|proof(?: point)?|cta|"
    r"call to action|tone|angle|focus|name|signature)\s*[:=]\s*(.+)$",
    _I,
)
_NUMBERED = re.compile(r"^\s*(\d)\s*[.)]\s*(.+)$")
_GO_AHEAD = re.compile(
    r"\b(go ahead|just write|write it|draft it|your call|you decide|use (?:your )?defaults|"
    r"skip|don'?t know|not sure|no idea|whatever works)\b",
    _I,
)
_THANKS = re.compile(r"\b(looks good|perfect|great|love it|thanks|thank you|lgtm|nice)\b", _I)
_CTA_CUE = re.compile(
    r"\b(cta|call to action|ask (?:for|them)|suggest|end with|close with|instead|propose|"
    r"offer|invite|book|schedule|reply with|reply ['\"]?yes)\b",
    _I,
)
_MENTION = re.compile(
    r"\b(?:mention|reference|talk about|bring up|include|add (?:a line|a note|something) about|"
    r"add that)\s+(?:that\s+)?([^.!?\n]{2,160})",
    _I,
)
_REMOVE = re.compile(
    r"\b(?:remove|drop|delete|take out|get rid of|leave out|no more|don'?t (?:mention|use)|"
    r"do not (?:mention|use)|stop (?:mentioning|using))\s+([^.!?,\n]{1,80})",
    _I,
)
_SUBJECT_QUOTED = re.compile(r"subject(?: line)?[^\"“\n]{0,24}[\"“]([^\"”\n]{2,120})[\"”]", _I)
_SUBJECT_EOL = re.compile(
    r"subject(?: line)?\s*(?:to|as|:|=|should be)\s*'?([^'\n]{2,120}?)'?\s*[.!]?\s*$", _I | re.M
)
_SHORTER = re.compile(
    r"\b(shorter|concise|briefer|trim|tighten|tighter|cut it down|less wordy|too long|condense|"
    r"shorten)\b",
    _I,
)
_LONGER = re.compile(
    r"\b(longer|more detail|expand|elaborate|flesh (?:it )?out|too short|more context|"
    r"more depth)\b",
    _I,
)
_GENERIC = re.compile(r"(something|anything|one|another|a |an |different|better)", _I)
_SECTIONS = {
    "proof": r"(proof(?: point)?|case study|stats?|data point|social proof|numbers?)",
    "ps": r"(p\.?s\.?|postscript)",
    "opener": r"(opener|opening line|personali[sz]ation|intro line|first line|hook)",
}
_VAR_WORDS = {
    "company name": "company",
    "company": "company",
    "first name": "first_name",
    "last name": "last_name",
    "full name": "full_name",
    "position": "position",
    "job title": "position",
    "title": "position",
    "role": "position",
    "headline": "headline",
    "name": "first_name",
}
_TRIGGER_KEYS = re.compile(r"news|trigger|event|funding|hiring|launch|initiative|priorit|pain", _I)
_BRIEF_KEYS = ("kind", "audience", "offer", "angle", "sender", "sender_name", "proof")


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the email should be: the brief gathered in chat plus the user's adjustments."""

    kind: str = ""
    audience: str = ""
    offer: str = ""
    angle: str = ""
    sender: str = ""
    sender_name: str = ""
    proof: str = ""
    cta: str = ""
    tone: str = ""
    length: str = ""
    mentions: tuple[str, ...] = ()
    omit: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    subject_variant: int = 0
    custom_subject: str = ""
    hook_text: str = ""  # a foreign skeleton's own words, kept rather than regenerated
    value_text: str = ""


@dataclass(frozen=True, slots=True)
class _Seq:
    position: int = 1
    total: int = 1
    prior: tuple[str, ...] = ()  # earlier subjects, quoted back in a follow-up
    names: tuple[str, ...] = ()  # earlier node names, only good enough to ask about

    @property
    def follow(self) -> bool:
        return self.position > 1


_TRIM = " \t-:;,.!?\"'\u201c\u201d\u2018\u2019"  # ASCII and typographic quotes


def _clean(text: Any, limit: int = 160) -> str:
    """A user-supplied phrase, safe to paste into copy (no block markers, bounded)."""
    if not isinstance(text, str):
        return ""
    out = " ".join(text.replace("&&", " ").split()).strip(_TRIM)
    return out if len(out) <= limit else out[:limit].rsplit(" ", 1)[0]


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int | float) and value == value and abs(value) < 2**53:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip()[:15])
    return default


def _seq(ctx: Any) -> _Seq:
    if not isinstance(ctx, dict):
        return _Seq()
    position = max(1, _int(ctx.get("position"), 1))
    found: dict[str, list[str]] = {"prior": [], "names": []}
    nodes = ctx.get("prior_nodes")
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, dict):
            continue
        for key, names in (("prior", ("subject", "draft_subject")), ("names", ("name", "title"))):
            label = next((_clean(node.get(k), 90) for k in names if _clean(node.get(k), 90)), "")
            found[key] += [label] if label else []
    total = max(position, _int(ctx.get("total_nodes"), position))
    return _Seq(position, total, tuple(found["prior"]), tuple(found["names"]))


def _stable(key: str, n: int) -> int:
    """A per-lead variant choice that is the same in every process (``hash()`` is salted)."""
    return int(hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:8], 16) % n


def _article(noun: str) -> str:
    if re.match(r"(head|chief|founder|co-founder|president|owner|c[etfmors]o)\b", noun, _I):
        return "the"
    if re.match(r"[AEFHILMNORSX][A-Z]{1,4}\b", noun):
        return "an"
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _tone_of(plan: _Plan) -> str:
    if plan.tone in TONES:
        return plan.tone
    senior = re.search(
        r"enterprise|vp|chief|director|head|c[etfmors]o|executive", plan.audience, _I
    )
    return "professional" if senior else "friendly"


def _cta_kind(text: str) -> str:
    if re.search(r"\b(demo|walk-?through)\b", text, _I):
        return "demo"
    if re.search(r"\breply\b.{0,12}\byes\b", text, _I):
        return "reply"
    if re.search(r"\b(call|chat|meeting|meet|calendar|book|phone|zoom)\b|\d+[- ]?min", text, _I):
        return "call"
    if re.search(r"\b(one-pager|overview|resource|deck|pdf)\b", text, _I):
        return "resource"
    return "reply" if re.search(r"\b(reply|respond)\b", text, _I) else ""


def _tone_word(text: str) -> str:
    if re.search(r"\b(less formal|not (?:too |so )?formal|warm|friendly|conversational)", text, _I):
        return "friendly"
    if re.search(r"\bformal", text, _I):
        return "formal"
    if re.search(r"\b(professional|confident|executive|polished|crisp|serious)", text, _I):
        return "professional"
    if re.search(r"\b(casual|relaxed|playful|informal|chatty|laid-back)\b", text, _I):
        return "casual"
    return ""


def _audience(text: str) -> str:
    for m in _AUDIENCE.finditer(text):
        phrase = _clean(m.group(1), 80)
        if _ROLES.search(phrase) and not re.match(r"(our|my|us|me|the cta|a demo)\b", phrase, _I):
            return phrase
    return ""


def _labels(text: str, topics: list[str] | None) -> dict[str, str]:
    """Facts from ``Label: value`` lines and from numbered answers to our own questions."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        label, numbered = _LABEL.match(line), _NUMBERED.match(line)
        if label:
            key, value = label.group(1).lower(), label.group(2)
        elif numbered and topics and 1 <= int(numbered.group(1)) <= len(topics):
            key, value = topics[int(numbered.group(1)) - 1], numbered.group(2)
            # a numbered answer may not follow our numbering: keep it only if it fits
            fits = {
                "audience": _ROLES.search(value),
                "cta": _cta_kind(value),
                "tone": _tone_word(value),
                "proof": not _cta_kind(value),
            }
            if not fits.get(key, True):
                continue
        else:
            continue
        if key in ("company", "sender", "from"):
            head, _, rest = value.partition(",")
            person = re.match(r"([A-Z][a-z]+(?: [A-Z][a-z]+)?) (?:at|from|of) (.+)$", head.strip())
            if person:
                found.setdefault("sender_name", person.group(1))
                head = person.group(2)
            found.setdefault("sender", _clean(head, 60))
            rest = re.sub(r"^\s*(?:we (?:sell|offer|make|provide)|an?|the)\s+", "", rest, flags=_I)
            found.setdefault("offer", _clean(rest, 80))
        elif key in ("product", "offer"):
            found.setdefault("offer", _clean(re.sub(r"^(an?|the|our)\s+", "", value, flags=_I)))
        elif key in ("audience", "target"):
            found.setdefault("audience", _clean(value, 80))
        elif key.startswith("proof"):
            found.setdefault("proof", _clean(value))
        elif key in ("cta", "call to action"):
            found.setdefault("cta", _cta_kind(value) or "call")
        elif key == "tone":
            found.setdefault("tone", _tone_word(value) or "friendly")
        elif key in ("angle", "focus"):
            found.setdefault("angle", _clean(value, 80))
        elif key in ("name", "signature"):
            found.setdefault("sender_name", _clean(value, 40))
    return {k: v for k, v in found.items() if v}


def _proof(text: str) -> str:
    for sentence in re.split(r"(?<=[.!?])\s+|\n", text):
        numeric = _PROOF_NUM.search(sentence) and not _CTA_WORD.search(sentence)
        if numeric or _PROOF_WORD.search(sentence):
            return _clean(
                re.sub(r"^\s*(\d[.)]|proof(?: point)?:|e\.g\.)\s*", "", sentence, flags=_I)
            )
    return ""


def _extract(text: str, topics: list[str] | None = None) -> _Plan:
    """Pull brief facts out of one user message; unknown facts stay empty."""
    text = text[:6000]
    found: dict[str, Any] = _labels(text, topics)

    def put(key: str, value: str) -> None:
        if value and key not in found:
            found[key] = value

    put("audience", _audience(text))
    for m in _OFFER.finditer(text):
        if _OFFER_NOUN.search(m.group(1)) or m.group(0).lower().startswith("we "):
            put("offer", _clean(m.group(1), 80))
    angle = _ANGLE.search(text)
    put("angle", _clean(angle.group(1), 80) if angle else "")
    for m in _SENDER.finditer(text):
        if m.group(1).split()[0] not in ("I", "A", "The", "We", "Not", "Happy", "Sure", "SOC"):
            put("sender", _clean(m.group(1), 60))
    name = _SENDER_NAME.search(text)
    put("sender_name", name.group(1) if name else "")
    put("proof", _proof(text))
    put("cta", _cta_kind(text) if _CTA_WORD.search(text) else "")
    put("tone", _tone_word(text))
    kinds = (
        ("follow-up", r"follow[- ]?up"),
        ("re-engagement", r"re-?engag|win[- ]?back"),
        ("invitation", r"invit|webinar|event"),
        ("cold", r"\bcold\b"),
        ("intro", r"\bintro|outreach"),
    )
    put("kind", next((k for k, pat in kinds if re.search(pat, text, _I)), ""))
    if re.search(r"\b(short|concise|brief|under \d+ words)\b", text, _I):
        put("length", "short")
    elif re.search(r"\b(long|detailed|in-depth)\b", text, _I):
        put("length", "long")
    return _Plan(**found)


def _merge(base: _Plan, new: _Plan) -> _Plan:
    """Later messages win: an answer refines what the brief said."""
    return replace(
        base, **{f.name: getattr(new, f.name) for f in fields(_Plan) if getattr(new, f.name)}
    )


def _allowed(plan: _Plan, names: Any) -> list[str]:
    out: list[str] = []
    for name in names if isinstance(names, tuple | list) else ():
        if isinstance(name, str) and IDENT_RE.fullmatch(name) and name not in plan.excluded:
            if name not in out:
                out.append(name)
    return out
