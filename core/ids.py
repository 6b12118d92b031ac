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
