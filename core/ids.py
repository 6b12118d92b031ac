"""Identifiers that sort by the time they were made: UUIDv7 (RFC 9562, section 5.7).

Every event, session and run gets one, and each is a key in a B-tree: the
events' unique index, the stream and document keys. A random (v4) key lands
on a random leaf page, so at a million rows nearly every insert dirties a
page of its own that no other insert of the batch shares, and the dirty pages
go to the WAL and back into the file (``docs/explanation/scale.md`` has the
arithmetic). A v7 key starts with the millisecond it was made: the keys of
one batch land on the index's right edge, a page or two for all of them.

Written by hand from ``os.urandom`` and ``time_ns`` instead of a dependency:
48 bits of Unix milliseconds, the version, 12 and 62 random bits, the variant.
Keys made within one millisecond are not ordered among themselves (the RFC
allows that); they still share the leaf.
"""

from __future__ import annotations

import os
import time


def uuid7_int(ms: int | None = None) -> int:
    """A version 7 UUID as its 128-bit integer, at Unix millisecond ``ms`` (default: now)."""
    if ms is None:
        ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10))
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)
    return ((ms & ((1 << 48) - 1)) << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b


def uuid7_hex(ms: int | None = None) -> str:
    """32 hex digits (``uuid.UUID(...).hex`` spelling)."""
    return f"{uuid7_int(ms):032x}"


def uuid7(ms: int | None = None) -> str:
    """The canonical 8-4-4-4-12 spelling, as ``str(uuid.UUID(...))`` spells it."""
    h = uuid7_hex(ms)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Uuid7Sequence:
    """UUIDv7s of one writer, the random bits counting up (RFC 9562, 6.2, method 2).

    Each id has the millisecond it was made, as ``uuid7`` does; its 12 ``rand_a``
    bits and the start of its 62 ``rand_b`` bits are random once per sequence,
    and ``rand_b`` then grows by one per id. So ids stay unique (two sequences
    start 62 random bits apart) and one writer's ids differ from each other by
    small numbers: a run's token deltas, packed once it ends, store their ids in
    a byte or two each instead of ten (``eventstore/packcodec.py``).
    """

    __slots__ = ("_count", "_rand_a", "_rand_b")

    def __init__(self) -> None:
        rand = int.from_bytes(os.urandom(10))
        self._rand_a = rand >> 68
        self._rand_b = rand & ((1 << 62) - 1)
        self._count = 0

    def next(self, ms: int | None = None) -> str:
        if ms is None:
            ms = time.time_ns() // 1_000_000
        rand_b = (self._rand_b + self._count) & ((1 << 62) - 1)
        self._count += 1
        value = (
            ((ms & ((1 << 48) - 1)) << 80)
            | (0x7 << 76)
            | (self._rand_a << 64)
            | (0b10 << 62)
            | rand_b
        )
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
