"""How SQLite stores an event's chain hash: its 32 bytes, not their 64 hex digits.

Every event row keeps its stream's chain hash (``events.hash``) and every
stream its head's (``streams.hash``); as hex text the hash was 32 bytes more
than the digest it spells, in each of the ~10 rows a chat turn appends
(docs/explanation/scale.md). A hash is stored as a 32-byte BLOB and read
back as the lowercase hex it was, so every record, export, proof, API answer
and PostgreSQL (which stores the text itself) sees the same string as before.

Like ``textcodec``, this is a storage encoding, not a change of meaning: the
value's SQL type says which it is. A file written before holds TEXT hashes,
which read as they are, beside the BLOBs of rows appended since; nothing
rewrites the old rows. A text that is not a hash's canonical spelling (an
imported file's, say, in capitals) stays TEXT, so it reads back as itself
and ``verify`` judges what the file held.
"""

from __future__ import annotations


def encode_hash(hex_hash: str) -> str | bytearray:
    """What to store for ``hex_hash``: the bytes it spells, or itself when they would
    not spell it back exactly.

    A ``bytearray``, not ``bytes``: Python's ``sqlite3`` binds a ``bytearray``
    (like a ``str``) as it is, but first looks for an adapter for any ``bytes``
    (two failed attribute lookups), which made a BLOB hash ~0.25 us a row
    slower to insert than the TEXT it replaced. SQLite stores both the same.
    """
    try:
        raw = bytearray.fromhex(hex_hash)
    except ValueError:
        return hex_hash
    return raw if raw.hex() == hex_hash else hex_hash


def decode_hash(value: str | bytes | bytearray) -> str:
    """The hash a stored value holds, as lowercase hex (TEXT as is)."""
    return value if isinstance(value, str) else value.hex()
