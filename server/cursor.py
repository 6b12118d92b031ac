"""Cursors on every realtime wire, read by one rule.

A client says where it stands in several spellings: ``after=`` on the
websocket and SSE channels, ``Last-Event-ID`` on both SSE wires, and the
Electric ``offset`` (``<updatedAtMs>_<seq>``) on the Trigger.dev run feed.
Each is a non-negative integer written in ASCII digits; anything else is a
400 (4400 on a websocket) that names the field. Blank means "not given".

One rule because the copies had drifted: the Trigger.dev stream clamped a
negative ``Last-Event-ID`` to 0 and replayed the run from its start while the
channels refused it, and ``str.isdigit`` let digits such as ``²`` through to
an ``int()`` that then failed with a 500. A cursor longer than 20 digits is
refused too: no log holds that many events, and it bounds the parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sessionstream.core.errors import ValidationFailed

_DIGITS = re.compile(r"[0-9]{1,20}")

AFTER = "after"
LAST_EVENT_ID = "Last-Event-ID"
#: the Electric offset of a first request: "no row yet, send the snapshot"
FIRST_OFFSET = "-1"


def parse_cursor(raw: str | None, name: str) -> int | None:
    """The cursor ``raw`` spells, or None when it is absent or blank."""
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        return None
    if not _DIGITS.fullmatch(value):
        raise ValidationFailed(f"{name} must be a non-negative integer, got '{value[:40]}'")
    return int(value)


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
    if not sep or not _DIGITS.fullmatch(head) or not _DIGITS.fullmatch(seq):
        raise ValidationFailed(f"offset must be -1 or <n>_<seq>, got '{offset[:40]}'")
    return int(seq)
