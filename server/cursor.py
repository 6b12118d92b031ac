"""Cursors on every realtime wire, read by one rule.

A client says where it stands in several spellings: ``after=`` on the
websocket and SSE channels, ``Last-Event-ID`` on both SSE wires, and the
Electric ``offset`` (``<updatedAtMs>_<seq>``) on the Trigger.dev run feed.
Each is a number as ``server/numbers.py`` reads every number (ASCII digits,
at most 18); anything else is a 400 (4400 on a websocket) that names the
field. Blank means "not given".

One rule because the copies had drifted: the Trigger.dev stream clamped a
negative ``Last-Event-ID`` to 0 and replayed the run from its start while the
channels refused it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sessionstream.core.errors import ValidationFailed
from sessionstream.server.numbers import is_natural, optional_natural

AFTER = "after"
LAST_EVENT_ID = "Last-Event-ID"
#: the Electric offset of a first request: "no row yet, send the snapshot"
FIRST_OFFSET = "-1"


def parse_cursor(raw: str | None, name: str) -> int | None:
    """The cursor ``raw`` spells, or None when it is absent or blank."""
    return optional_natural(raw, name)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a client stands, and which of its fields said so (for the messages it gets)."""

    value: int
    name: str
    resumed: bool


def channel_cursor(after: str | None, last_event_id: str | None) -> Cursor:
    """Where a websocket or SSE channel starts, and whether the client is resuming.

    ``Last-Event-ID`` (sent by ``EventSource`` on its own) wins over ``after=``,
    so a page that reconnects keeps its place whatever its URL says.
    """
    resumed = parse_cursor(last_event_id, LAST_EVENT_ID)
    if resumed is not None:
        return Cursor(resumed, LAST_EVENT_ID, True)
    value = parse_cursor(after, AFTER) or 0
    return Cursor(value, AFTER, value > 0)


def offset_seq(offset: str) -> int:
    """The run seq an Electric offset (``<updatedAtMs>_<seq>``) carries."""
    head, sep, seq = offset.partition("_")
    if not sep or not is_natural(head) or not is_natural(seq):
        raise ValidationFailed(f"offset must be -1 or <n>_<seq>, got '{offset[:40]}'")
    return int(seq)
