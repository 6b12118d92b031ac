"""The bounds of what a session PATCH may carry, checked before anything is validated or written.

A PATCH stores what the client sent, and every later read of the session
(and of its history) pays for it again, so its size is bounded by more than
the body limit: a 3 MB ``[{}, {}, ...]`` is a million objects once parsed.
Every array may hold at most ``patch_max_items`` items and every object as
many entries, at any depth; every string (keys too) at most
``patch_max_chars`` characters. The body as a whole stays under
``SESSIONSTREAM_MAX_BODY_BYTES`` (413). A refusal is a 400 naming a field
found over a bound; nothing is written. See docs/reference/limits.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sessionstream.core.errors import ValidationFailed
from sessionstream.core.settings import Settings


@dataclass(frozen=True, slots=True)
class Bounds:
    max_items: int
    max_chars: int

    @classmethod
    def of(cls, settings: Settings) -> Bounds:
        return cls(settings.patch_max_items, settings.patch_max_chars)

    def check(self, value: Any) -> None:
        """Raise ``ValidationFailed`` for the first array, object or string over a bound."""
        stack: list[tuple[Any, str]] = [(value, "")]
        while stack:
            item, path = stack.pop()
            if isinstance(item, str):
                if len(item) > self.max_chars:
                    self._refuse(path, f"is {len(item)} characters long", self.max_chars)
            elif isinstance(item, list):
                if len(item) > self.max_items:
                    self._refuse(path, f"has {len(item)} items", self.max_items)
                stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
            elif isinstance(item, dict):
                if len(item) > self.max_items:
                    self._refuse(path, f"has {len(item)} entries", self.max_items)
                for key, v in item.items():
                    name = f"{path}.{key}" if path else str(key)
                    if len(key) > self.max_chars:
                        self._refuse(name, "is a key longer than allowed", self.max_chars)
                    stack.append((v, name))

    @staticmethod
    def _refuse(path: str, what: str, limit: int) -> None:
        field = path or "the body"
        raise ValidationFailed(
            f"{field[:200]} {what}; at most {limit} allowed",
            details={"field": field[:200], "limit": limit},
        )
