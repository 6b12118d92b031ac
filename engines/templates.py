"""Template rendering for drafts: ``%var%`` (canonical) and ``{{var}}`` (also accepted).

These are pure functions so that the engines, the server and the tests agree on what a
draft means. Rendering never raises: leads arrive from clients as loosely typed JSON, and
one odd lead must cost a fallback word, not a failed example batch.

``&&instruction&&`` blocks (per-lead writing instructions in a skeleton body) are parsed
here too, because deciding where a block starts and ends is a template question.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: ``%name%`` or ``{{ name }}``; names are identifiers, so "30% off, 20% more" is plain text.
VAR_RE = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)%|\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
BLOCK_RE = re.compile(r"&&(.*?)&&", re.S)
IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

STANDARD_FIELDS: tuple[str, ...] = (
    "first_name",
    "last_name",
    "full_name",
    "company",
    "position",
    "headline",
    "linkedin_url",
)

#: Words that keep a sentence readable when a lead lacks the value ("Hi there,").
DEFAULT_FALLBACKS: dict[str, str] = {
    "first_name": "there",
    "full_name": "there",
    "company": "your team",
    "position": "your role",
}

# An empty fallback leaves a hole; holes are closed afterwards so "Dear %first_name%
# %last_name%," becomes "Dear Ana," rather than "Dear Ana ,".
_HOLE = "\x00"
_HOLE_BEFORE_PUNCT = re.compile(r"[ \t]*\x00+(?=[ \t]*[,.;:!?)])")
_HOLE_ANY = re.compile(r"([ \t]*)\x00+([ \t]*)")


@dataclass(frozen=True, slots=True)
class Rendered:
    text: str
    #: variables the lead could not supply, in order of first use; each got a fallback
    missing: tuple[str, ...] = ()


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def clean_value(value: Any) -> str | None:
    """A lead value as one line of text, or None when it is not usable text.

    Numbers count (a custom field "seats: 40" is real data); booleans, containers and
    control characters do not, since pasting them into an email would be nonsense.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = f"{value:g}"
    else:
        return None
    text = " ".join("".join(ch for ch in text if ch >= " " or ch.isspace()).split())
    return text or None


def _direct(lead: dict[Any, Any], name: str) -> str | None:
    raw = lead.get(name)
    # a number is real data in a custom field ("seats: 40") but junk as a name or a company
    value = clean_value(raw) if isinstance(raw, str) or name not in STANDARD_FIELDS else None
    if value is not None:
        return value
    custom = lead.get("custom_fields")
    if not isinstance(custom, dict):
        return None
    value = clean_value(custom.get(name))
    if value is not None:
        return value
    folded = name.casefold()
    for key, raw in custom.items():
        if isinstance(key, str) and key.casefold() == folded:
            value = clean_value(raw)
            if value is not None:
                return value
    return None


def lead_value(lead: Any, name: str) -> str | None:
    """Resolve one variable from a lead: its own field, a custom field, or a derived name.

    Leads often carry only ``full_name`` or only first/last, and a greeting should work
    with either, so the missing form is derived from the other.
    """
    if not isinstance(lead, dict) or not isinstance(name, str):
        return None
    value = _direct(lead, name)
    if value is not None:
        return value
    if name == "full_name":
        parts = [p for p in (_direct(lead, "first_name"), _direct(lead, "last_name")) if p]
        return " ".join(parts) or None
    if name in ("first_name", "last_name"):
        words = (_direct(lead, "full_name") or "").split()
        if name == "first_name" and words:
            return words[0]
        if name == "last_name" and len(words) > 1:
            return " ".join(words[1:])
    return None


def _fallback_table(fallbacks: Any) -> dict[str, str]:
    table = dict(DEFAULT_FALLBACKS)
    if isinstance(fallbacks, dict):
        for key, value in fallbacks.items():
            if isinstance(key, str):
                table[key] = clean_value(value) or ""
    # a fallback must never itself look like (part of) a variable
    return {k: re.sub(r"[%{}&]", "", v) for k, v in table.items()}


def _close_holes(text: str) -> str:
    text = _HOLE_BEFORE_PUNCT.sub("", text)
    return _HOLE_ANY.sub(lambda m: " " if m.group(1) and m.group(2) else "", text)


def _name(match: re.Match[str]) -> str:
    return match.group(1) or match.group(2)


def render(template: Any, lead: Any, *, fallbacks: dict[str, str] | None = None) -> Rendered:
    """Fill every variable from ``lead``; unresolvable ones get a fallback and are reported.

    Substitution is single pass, so a lead value that happens to contain ``%x%`` is
    pasted as text and never expanded.
    """
    text = _as_text(template).replace(_HOLE, "")
    table = _fallback_table(fallbacks)
    missing: list[str] = []

    def sub(match: re.Match[str]) -> str:
        name = _name(match)
        value = lead_value(lead, name)
        if value is not None:
            return value
        if name not in missing:
            missing.append(name)
        return table.get(name, "") or _HOLE

    return Rendered(_close_holes(VAR_RE.sub(sub, text)), tuple(missing))


def variables_in(template: Any) -> list[str]:
    """Variable names used by ``template``, each once, in order of first use."""
    names: list[str] = []
    for match in VAR_RE.finditer(_as_text(template)):
        name = _name(match)
        if name not in names:
            names.append(name)
    return names


def canonical(template: Any) -> str:
    """Rewrite ``{{var}}`` as ``%var%`` so stored drafts use one syntax."""
    return VAR_RE.sub(lambda m: f"%{_name(m)}%", _as_text(template))


def restrict_to(
    template: Any, allowed: Iterable[str], *, fallbacks: dict[str, str] | None = None
) -> str:
    """Keep only ``allowed`` variables (in canonical form); others become fallback text.

    This is the engine's guarantee that it never emits a variable the renderer cannot
    resolve. It loops because removing a variable can join stray ``%`` signs around it
    into a new one (``%%company%%``); every pass removes at least two of them, so it ends.
    """
    keep = [a for a in allowed if isinstance(a, str)]
    table = _fallback_table(fallbacks)
    text = _as_text(template).replace(_HOLE, "")

    def sub(match: re.Match[str]) -> str:
        name = _name(match)
        return f"%{name}%" if name in keep else (table.get(name, "") or _HOLE)

    while True:
        text = _close_holes(VAR_RE.sub(sub, text))
        if all(name in keep for name in variables_in(text)):
            return text


def blocks_in(template: Any) -> list[str]:
    """The ``&&instruction&&`` blocks of a skeleton body, in order."""
    return [m.group(1).strip() for m in BLOCK_RE.finditer(_as_text(template))]


def fill_blocks(template: Any, fill: Callable[[int, str], str]) -> str:
    """Replace the i-th ``&&block&&`` with ``fill(i, instruction)``.

    A dangling ``&&`` (an unclosed block) is dropped so no marker leaks into an email.
    """
    counter = itertools.count()
    text = BLOCK_RE.sub(lambda m: fill(next(counter), m.group(1).strip()), _as_text(template))
    return text.replace("&&", "")
