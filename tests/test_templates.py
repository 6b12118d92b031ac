"""Template rendering: both syntaxes, derived names, fallbacks, and no crash on odd input."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionstream.engines.templates import (
    Rendered,
    blocks_in,
    canonical,
    fill_blocks,
    lead_value,
    render,
    restrict_to,
    variables_in,
)

ANA = {"first_name": "Ana", "last_name": "Ruiz", "company": "Initech", "position": "CFO"}


@pytest.mark.parametrize(
    ("template", "lead", "text", "missing"),
    [
        ("Hi %first_name%,", ANA, "Hi Ana,", ()),
        ("Hi {{first_name}},", ANA, "Hi Ana,", ()),
        ("Hi {{ first_name }} at {{company}}", ANA, "Hi Ana at Initech", ()),
        ("%full_name%", ANA, "Ana Ruiz", ()),
        ("%first_name% / %last_name%", {"full_name": "Ana Maria Ruiz"}, "Ana / Maria Ruiz", ()),
        ("%industry%", {"custom_fields": {"industry": "fintech"}}, "fintech", ()),
        ("%Industry%", {"custom_fields": {"industry": "fintech"}}, "fintech", ()),
        ("%seats% seats", {"custom_fields": {"seats": 40}}, "40 seats", ()),
        ("%ratio%", {"custom_fields": {"ratio": 1.5}}, "1.5", ()),
        ("Hi %first_name%,", {}, "Hi there,", ("first_name",)),
        ("at %company% as %position%", {}, "at your team as your role", ("company", "position")),
        ("Dear %first_name% %nickname%,", ANA, "Dear Ana,", ("nickname",)),
        ("%nickname% hello", ANA, "hello", ("nickname",)),
        ("a %nickname% b", ANA, "a b", ("nickname",)),
        ("%company%", {"company": "%first_name%"}, "%first_name%", ()),
        ("%company%", {"company": "  Acme \n Corp "}, "Acme Corp", ()),
        ("30% off, 20% more", ANA, "30% off, 20% more", ()),
        ("%first_name% %first_name%", {}, "there there", ("first_name",)),
        ("%first_name%", {"first_name": None}, "there", ("first_name",)),
        ("%first_name%", {"first_name": True}, "there", ("first_name",)),
        ("%first_name%", {"first_name": ["Ana"]}, "there", ("first_name",)),
        ("%first_name%", {"first_name": {"x": 1}}, "there", ("first_name",)),
        ("%first_name%", {"first_name": float("nan")}, "there", ("first_name",)),
        ("%first_name%", {"first_name": ""}, "there", ("first_name",)),
        ("%x%", {"custom_fields": "junk"}, "", ("x",)),
        ("%x%", {"custom_fields": {1: "a", "x": None}}, "", ("x",)),
        ("Hi %first_name%", None, "Hi there", ("first_name",)),
        ("Hi %first_name%", "not a lead", "Hi there", ("first_name",)),
        ("Hi %first_name%", [ANA], "Hi there", ("first_name",)),
        (None, ANA, "", ()),
        (123, ANA, "123", ()),
    ],
)
def test_render_table(template: Any, lead: Any, text: str, missing: tuple[str, ...]) -> None:
    assert render(template, lead) == Rendered(text, missing)


def test_render_custom_fallbacks_override_defaults() -> None:
    out = render("%company% / %tier%", {}, fallbacks={"company": "your company", "tier": "gold"})
    assert out == Rendered("your company / gold", ("company", "tier"))


def test_rendered_is_frozen_and_slotted() -> None:
    out = render("x", {})
    assert not hasattr(out, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.text = "y"  # type: ignore[misc]


def test_lead_value_prefers_own_field_then_custom_then_derived() -> None:
    lead = {"company": "A", "custom_fields": {"company": "B", "first_name": "Custom"}}
    assert lead_value(lead, "company") == "A"
    assert lead_value(lead, "first_name") == "Custom"
    assert lead_value({"first_name": "Ana"}, "full_name") == "Ana"
    assert lead_value({}, "full_name") is None
    assert lead_value(ANA, 5) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("template", "names"),
    [
        ("Hi %first_name% at {{company}} and %first_name%", ["first_name", "company"]),
        ("{{ position }}{{position}}%position%", ["position"]),
        ("100% sure, 50 %", []),
        ("&&tie %position% to ROI&&", ["position"]),
        (None, []),
    ],
)
def test_variables_in(template: Any, names: list[str]) -> None:
    assert variables_in(template) == names


def test_canonical_rewrites_braces() -> None:
    assert canonical("Hi {{ first_name }}, %company%") == "Hi %first_name%, %company%"


@pytest.mark.parametrize(
    ("template", "allowed", "expected"),
    [
        ("Hi %first_name% at %company%", ["first_name"], "Hi %first_name% at your team"),
        ("Hi {{first_name}}", ["first_name"], "Hi %first_name%"),
        ("Hi {{first_name}}", [], "Hi there"),
        ("Dear %first_name% %last_name%,", ["first_name"], "Dear %first_name%,"),
        ("%%first_name%%", [], ""),  # "%there%" would be a new variable, so it goes too
        ("Plain text", [], "Plain text"),
    ],
)
def test_restrict_to(template: str, allowed: list[str], expected: str) -> None:
    assert restrict_to(template, allowed) == expected


def test_blocks() -> None:
    body = "Hi %first_name%,\n\n&&Opener tied to %position%&& then &&CTA&& &&dangling"
    assert blocks_in(body) == ["Opener tied to %position%", "CTA"]
    filled = fill_blocks(body, lambda i, instruction: f"[{i}:{instruction[:3]}]")
    assert filled == "Hi %first_name%,\n\n[0:Ope] then [1:CTA] dangling"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
field_names = st.sampled_from(
    [
        "first_name",
        "last_name",
        "full_name",
        "company",
        "position",
        "headline",
        "x",
        "custom_fields",
    ]
)
leads = st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=8) | json_values
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
tokens = names.flatmap(lambda n: st.sampled_from([f"%{n}%", f"{{{{{n}}}}}", f"{{{{ {n} }}}}"]))
templates = st.lists(st.text(max_size=12) | tokens | st.sampled_from(["%", "{{", "}}", "&&"])).map(
    "".join
)


@settings(max_examples=300)
@given(templates, leads)
def test_render_never_raises_and_reports_only_used_variables(template: str, lead: Any) -> None:
    out = render(template, lead)
    assert isinstance(out.text, str)
    assert set(out.missing) <= set(variables_in(template))
    assert len(out.missing) == len(set(out.missing))


safe_text = st.text(alphabet=st.characters(blacklist_characters="%{}&\x00"), max_size=12)


@settings(max_examples=200)
@given(st.lists(safe_text | tokens), st.dictionaries(field_names, safe_text))
def test_render_of_clean_input_leaves_no_variables(parts: list[str], lead: dict[str, str]) -> None:
    out = render(" ".join(parts), lead)
    assert variables_in(out.text) == []


@settings(max_examples=300)
@given(templates, st.lists(names, max_size=4))
def test_restrict_to_never_leaves_a_disallowed_variable(template: str, allowed: list[str]) -> None:
    out = restrict_to(template, allowed)
    assert set(variables_in(out)) <= set(allowed)


@pytest.mark.parametrize(
    ("template", "lead", "text", "missing"),
    [
        # the one-space boundary: two words are a first and a last name
        ("%first_name%|%last_name%", {"full_name": "Ana Ruiz"}, "Ana|Ruiz", ()),
        ("%last_name%.", {"full_name": "Ana"}, ".", ("last_name",)),
        ("%first_name% %last_name%", {"full_name": " "}, "there", ("first_name", "last_name")),
        ("%full_name%", {"last_name": "Ruiz"}, "Ruiz", ()),
        ("%full_name%", {"first_name": "", "last_name": "Ruiz"}, "Ruiz", ()),
        # a yes/no field is not text: the lead lacks a word for it, so it gets a fallback,
        # never "True" or "False" pasted into an email
        ("VIP: %vip%!", {"custom_fields": {"vip": True}}, "VIP:!", ("vip",)),
        ("%Vip%", {"custom_fields": {"VIP": False}}, "", ("Vip",)),
        ("%trial%", {"trial": True}, "", ("trial",)),
        # a standard field takes text only; a custom field of the same name may be a number
        ("%company%", {"company": 42}, "your team", ("company",)),
        ("%company%", {"company": 42, "custom_fields": {"company": "Acme"}}, "Acme", ()),
        ("%seats%", {"seats": 40}, "40", ()),
        ("%big%", {"custom_fields": {"big": 1e21}}, "1e+21", ()),
        ("%inf%", {"custom_fields": {"inf": float("inf")}}, "", ("inf",)),
        ("%x%", {"custom_fields": {"X": None, "x ": "no", "x": "yes"}}, "yes", ()),
        # case is forgiven only when no field has the exact name the template wrote
        ("%x%|%X%", {"custom_fields": {"X": "upper", "x": "exact"}}, "exact|upper", ()),
        ("%X%", {"custom_fields": {"x": None, "X2": "no", "x2": 1}}, "", ("X",)),
        # control characters go before spaces are collapsed: no stray space is left
        ("<%X%>", {"custom_fields": {"y": 1, "x": "\x07 a\tb\x1b "}}, "<a b>", ()),
        ("%a%", {"custom_fields": {"a": "\x01\x02"}}, "", ("a",)),
        ("[%a%]", {"a": "x"}, "[x]", ()),
        ("a\x00b %first_name%", ANA, "ab Ana", ()),
        ("%nick%, hi", {}, ", hi", ("nick",)),
        ("x %nick% , y", {}, "x , y", ("nick",)),  # the template's own space stays
        ("x\t%nick%\ty", {}, "x y", ("nick",)),
        ("x%nick%y", {}, "xy", ("nick",)),
    ],
)
def test_render_rules(template: Any, lead: Any, text: str, missing: tuple[str, ...]) -> None:
    assert render(template, lead) == Rendered(text, missing)


def test_fallbacks_never_carry_variable_syntax() -> None:
    loose: dict[str, Any] = {"company": "%{acme}& co", "tier": 3}  # JSON from a client
    out = render("%company% / %tier% / %x%", {}, fallbacks=loose)
    assert out == Rendered("acme co / 3 /", ("company", "tier", "x"))
    out = render("%tier%!", {}, fallbacks={"tier": True, 5: "x"})  # type: ignore[dict-item]
    assert out == Rendered("!", ("tier",))
    assert render("%first_name%", {}, fallbacks="junk").text == "there"  # type: ignore[arg-type]


def test_restrict_to_uses_the_fallbacks_given() -> None:
    out = restrict_to(
        "Hi %first_name% at {{company}} (%tier%)",
        ["first_name", 7],  # type: ignore[list-item]
        fallbacks={"company": "your {shop}", "tier": "%gold%"},
    )
    assert out == "Hi %first_name% at your shop (gold)"
    assert restrict_to("a\x00b %tier% c", [], fallbacks={"tier": "x"}) == "ab x c"


def test_lead_value_derivations() -> None:
    assert lead_value({"full_name": "Ana  Maria Ruiz"}, "last_name") == "Maria Ruiz"
    assert lead_value({"full_name": "Ana"}, "first_name") == "Ana"
    assert lead_value({"full_name": "Ana"}, "last_name") is None
    assert lead_value({"full_name": "Ana Ruiz"}, "company") is None
    assert lead_value({"first_name": "Ana", "last_name": "Ruiz"}, "full_name") == "Ana Ruiz"
    assert lead_value([], "first_name") is None


def test_canonical_and_blocks_of_non_text() -> None:
    assert canonical(None) == "" and canonical(7) == "7"
    assert blocks_in(None) == [] and blocks_in("&&  a \n b &&") == ["a \n b"]
    assert fill_blocks("&&x&&&&y&&", lambda i, s: f"{i}{s}") == "0x1y"
    assert variables_in("{{a}} %b% {{ a }}") == ["a", "b"]
