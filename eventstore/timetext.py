"""The one spelling of a time the log stores: RFC 3339 UTC, milliseconds and a ``Z``.

Spelling a time was mostly ``strftime`` (2 us in a tight loop, 18-27 us on the
writer thread between two commits; an eighth of ``verify``'s unpacking at 10^5
events), and times spelled one after another mostly share their second. So a
:class:`Seconds` spells each second once and only the milliseconds each time.
The writer's clock (``model.utc_now``) and the pack decoder (``packcodec``) keep
one each, so neither evicts the other's second.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Seconds:
    """Spells Unix milliseconds, keeping the last second's spelling."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[int, str] = (-1, "")

    def spell(self, ms: int) -> str:
        second, millis = divmod(ms, 1000)
        last = self._last  # one read: a tuple, swapped whole, safe on any thread
        if last[0] != second:
            text = (_EPOCH + timedelta(seconds=second)).strftime("%Y-%m-%dT%H:%M:%S")
            last = self._last = (second, text)
        return f"{last[1]}.{millis:03d}Z"
