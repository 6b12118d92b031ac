"""What a user reads when a setting is unusable: one line naming each problem.

Apart from the settings model so that ``core/settings.py`` holds the settings
themselves; the model builds each :class:`Problem` from pydantic's error and
its own field metadata (the variable, the flag, a hint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic_core import ErrorDetails

from sessionstream.core.errors import ConfigError

#: what a user reads for each kind of pydantic error; the rest keep pydantic's words
_PHRASES = {
    "int_parsing": "is not a valid integer",
    "int_type": "is not a valid integer",
    "int_from_float": "is not a valid integer",
    "float_parsing": "is not a valid number",
    "float_type": "is not a valid number",
    "finite_number": "must be a finite number",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "literal_error": "must be {expected}",
    "string_too_short": "must be at least {min_length} characters",
    "string_pattern_mismatch": "is not in the expected form",
    "extra_forbidden": "is not a setting",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One unusable setting: ``SESSIONSTREAM_PORT='abc' is not a valid integer``."""

    setting: str
    label: str  # the variable, or the flag when the value came from one
    value: Any  # None for a secret: its value is never echoed
    text: str

    def __str__(self) -> str:
        given = "" if self.value is None else f"={self.value!r}"
        return f"{self.label}{given} {self.text}"


def phrase(error: ErrorDetails) -> str:
    """Our words for a pydantic error (its own for kinds we have none for)."""
    words = _PHRASES.get(error["type"])
    return words.format(**error.get("ctx", {})) if words else error["msg"]


def config_error(problems: list[Problem]) -> ConfigError:
    """All problems on one line, so a user fixes them in one go."""
    return ConfigError("; ".join(map(str, problems)), details={"problems": problems})
