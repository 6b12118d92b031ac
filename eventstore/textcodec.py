"""How SQLite stores a large JSON text: deflated against a preset dictionary.

A chat turn keeps whole texts in a few events (the assistant's message, the
skeleton and draft it revised) and in the session document that folds them,
and as plain JSON those rows were most of what a finished turn costs on disk
(docs/explanation/scale.md). A text of at least ``MIN_BYTES`` (an event's
metadata: ``META_MIN_BYTES``) is stored as
a BLOB: the text's length in ASCII digits, a tag byte, then raw deflate of
its UTF-8 against ``ZDICT`` (the keys and values every event and document
repeats, so even a short text compresses). A shorter text, or one that
does not get smaller, stays TEXT, so small events (most of an append
benchmark's) cost no compression, and a file written before this reads
unchanged: the value's SQL type says which it is.

This is a storage encoding, not a change of meaning: reading a row gives
back the exact text that was encoded, so hashes, ``verify``, exports, the
Merkle tree and PostgreSQL (which stores the text itself) are unaffected.

Pages are cut by a byte budget computed in SQL from the stored length
(``size_sql``). SQLite casts a BLOB to an integer by reading the digits it
starts with, so a deflated text still counts its own length there, and a
page holds what it held before.

``ZDICT`` must never change: a new dictionary needs a new tag.
"""

from __future__ import annotations

import zlib

#: texts shorter than this stay TEXT: compressing them costs more time than it saves bytes
MIN_BYTES = 160
#: an event's metadata this long or longer is deflated. Metadata is mostly the keys this
#: dictionary holds around one or two ids, so a run's usual 120-byte metadata deflates to
#: about 75 (383 bytes less per chat turn, 5 us an encode), where a data text of 96 to
#: 160 bytes saved 23 bytes a turn at the same cost (docs/explanation/scale.md)
META_MIN_BYTES = 96
#: the byte after a stored BLOB's length: raw deflate against ``ZDICT`` follows
TAG_DEFLATE_V1 = 1

# the fragments the events and documents repeat (deflate looks back into the dictionary,
# nearer its end is cheaper: the commonest fragments come last)
ZDICT = (
    b" the of and to a in for is you your with that on at we our this it be can or as "
    b'Hi %first_name%,\\n\\n %company% %position% \\n\\nBest,"'
    b'"availableVarNames":["first_name","company","position"],"sampleLeads":[{'
    b'"first_name":"","company":"","position":"'
    b'{"blocks":[{"approach":"","fallback":"","fields":["first_name","position","company"],'
    b'"instruction":"","name":"Opener"}],"body":"","subject":"'
    b'{"draft_body":"","draft_subject":"","skeleton":{"blocks":[{'
    b'"messages":[{"content":"","role":"assistant"},{"content":"","role":"user"}],'
    b'"row":{"campaign_id":"","created_at":"","id":"","node_id":"","title":"","user_id":"'
    b'"status":"completed","task_status":"chat_processing","kind":"turn","outcome":'
    b'"run.completed","run_id":"run_","session_id":"","request_id":"'
    b'{"actor":{"id":"","type":"run"},{"actor":{"id":"","type":"user"},'
    b'{"content":"","role":"assistant"}{"content":"","role":"user"}'
)

_TAG = bytes([TAG_DEFLATE_V1])
_DIGITS = frozenset(b"0123456789")


def encode(text: str, *, level: int = 6, min_bytes: int = MIN_BYTES) -> str | bytes:
    """What to store for ``text``: itself, or its tagged deflate when that is smaller."""
    if len(text) < min_bytes:
        return text
    raw = text.encode("utf-8", "surrogatepass")
    packer = zlib.compressobj(level, zlib.DEFLATED, -15, zdict=ZDICT)
    packed = b"%d" % len(text) + _TAG + packer.compress(raw) + packer.flush()
    return packed if len(packed) < len(raw) else text


def decode(value: str | bytes) -> str:
    """The text a stored value holds (TEXT as is; a tagged BLOB inflated)."""
    if isinstance(value, str):
        return value
    start = 0
    while start < len(value) and value[start] in _DIGITS:
        start += 1
    if start == 0 or start == len(value) or value[start] != TAG_DEFLATE_V1:
        raise ValueError("a stored text has an unknown encoding")
    unpacker = zlib.decompressobj(-15, zdict=ZDICT)
    raw = unpacker.decompress(memoryview(value)[start + 1 :]) + unpacker.flush()
    return raw.decode("utf-8", "surrogatepass")


def stored_size(value: str | bytes) -> int:
    """A stored value's weight in a page's byte budget (``size_sql`` in Python)."""
    return int(value[: value.index(TAG_DEFLATE_V1)]) if isinstance(value, bytes) else len(value)


def size_sql(column: str) -> str:
    """SQL for a stored value's length as text (a BLOB's leading digits)."""
    return (
        f"(CASE WHEN typeof({column}) = 'blob' THEN CAST({column} AS INTEGER) "
        f"ELSE length({column}) END)"
    )
