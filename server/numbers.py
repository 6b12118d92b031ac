"""Numbers a client writes in a path, a query or a header, read by one rule.

A number on the wire is ASCII digits, at most 18 of them: it then always
fits the signed 64-bit columns positions and versions live in, and the parse
is bounded. Anything else (a sign, ``²`` or Arabic-Indic digits that
``str.isdigit`` and ``int()`` take for digits, 23 digits, an inner space) is
a 400 that names the field. Surrounding spaces and tabs are allowed, as HTTP
allows them around a header value; other whitespace is not.

One rule because the copies had drifted: ``If-Match`` used ``str.isdigit``
and let ``²`` through to an ``int()`` that raised (a 500), the realtime
cursors allowed 20 digits, the history page 18, and ``Timeout-Seconds``
went through ``float()``, which reads ``١٢`` as twelve and ``nan`` as a
number. ``If-Match`` keeps its own status (412) for a value that is not a
version: an entity tag that cannot match is a failed precondition (RFC 9110,
section 13.1.1), and that is documented.
"""

from __future__ import annotations

import re

from sessionstream.core.errors import ValidationFailed

#: how many digits a number may have: 10**18 - 1 is below 2**63
MAX_DIGITS = 18
MAX_VALUE = 10**MAX_DIGITS - 1

_NATURAL = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
_DECIMAL = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}(?:\.[0-9]{{1,9}})?")
#: what HTTP calls optional whitespace; ``str.strip()`` would also take U+3000 and friends
_OWS = " \t"


def is_natural(raw: str) -> bool:
    """Whether ``raw`` (already trimmed) is a number this server reads."""
    return _NATURAL.fullmatch(raw) is not None


def natural(raw: str, name: str, *, low: int = 0, high: int = MAX_VALUE) -> int:
    """The integer ``raw`` spells, from ``low`` to ``high``; otherwise a 400 naming ``name``."""
    value = raw.strip(_OWS)
    if _NATURAL.fullmatch(value) is None or not low <= int(value) <= high:
        if (low, high) == (0, MAX_VALUE):
            wanted = f"a non-negative integer of at most {MAX_DIGITS} ASCII digits"
        else:
            wanted = f"an integer from {low} to {high} in ASCII digits"
        raise ValidationFailed(f"{name} must be {wanted}, got {raw[:40]!r}")
    return int(value)


def optional_natural(
    raw: str | None, name: str, *, low: int = 0, high: int = MAX_VALUE
) -> int | None:
    """``natural``, or None when the field is absent or blank (blank means "not given")."""
    if raw is None or not raw.strip(_OWS):
        return None
    return natural(raw, name, low=low, high=high)


def seconds(raw: str, name: str) -> float:
    """A non-negative number of seconds: ASCII digits with an optional ASCII fraction."""
    value = raw.strip(_OWS)
    if _DECIMAL.fullmatch(value) is None:
        raise ValidationFailed(
            f"{name} must be a number of seconds in ASCII digits, got {raw[:40]!r}"
        )
    return float(value)
