"""How a pack spells its events: by column, each in its smallest spelling (formats 2, 3).

Format 1 (``eventstore/packing.py``) kept each delta as one JSON array
``[position step, event id, time, data]``. Most of its compressed bytes were
the event id (a UUIDv7 written out in hex, whose first 48 bits are the
millisecond it was made) and the time (a full RFC 3339 string). Once deltas
come a token at a time (``services/coalesce.py``) there are more of them,
so format 2 spells the same facts smaller, one column each:

- ``steps``: position steps, as before;
- ``times``: milliseconds since the previous delta's time, or the time itself
  (a string) for the first delta and for any time whose spelling this would
  not give back exactly;
- ``ids``: per delta, the id's millisecond field minus the delta's own time
  (usually 0), its other 80 bits in ``id_bits``; or the id itself (a string)
  when it is not a canonical lowercase UUID;
- ``id_bits``: per such id, its 80 bits less the previous such id's, when
  that is a small step up (a run's ids count up: ``core/ids.Uuid7Sequence``),
  else the bits themselves, base64url (a string of 14 characters);
- ``data``: the text alone when the data is exactly ``{"text": <string>}``,
  else the data object.

Format 3 (a whole run's events, ``eventstore/packing.py``) adds two columns
after these five: ``kinds``, each event's type as its index in the pack's
``types``, and ``metas``, ``[index, metadata]`` for each event whose
metadata is not the pack's usual one.

Every field comes back exactly as it was: ``pack_stream`` checks that the
packs give back the events before any row is deleted. Pure: no I/O.
"""

from __future__ import annotations

import base64
import re
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sessionstream.eventstore.textcodec import ZDICT
from sessionstream.eventstore.timetext import Seconds

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
#: an id's bits are stored as a step from the previous id's below this
_SMALL_STEP = 1 << 32

#: format 4 deflates a body against this preset dictionary: the text codec's (the words
#: and keys the service's texts repeat), then what a pack of a run repeats (its keys,
#: the run events' types and data keys). It must never change: a new one is a new format
ZDICT_4 = ZDICT + (
    b'{"done":0,"total":{"engine":"offline","kind":"turn","model":null}'
    b'{"body":"","lead_id":"lead-1","subject":"'
    b'{"framework_version":1,"skeleton":{"blocks":[{"approach":"'
    b'{"message":{"content":"","role":"assistant"}}'
    b'"format":4,"types":["message.delta","run.started","message.completed",'
    b'"skeleton.updated","draft.updated","example.generated","examples.progress"],'
    b'"metadata":{"actor":{"id":null,"type":"run"},"session_id":null},'
    b'"refs":[[["actor","id"],0],[["session_id"],1]],"segments":[["'
)
#: the FDICT bit of a zlib stream's second byte: deflated against a preset dictionary
_FDICT = 0x20

#: one delta: (position step, event id, recorded_at, data)
Entry = tuple[int, str, str, dict[str, Any]]


def _ms_of(at: str) -> int | None:
    """The Unix millisecond of a time in the store's one spelling, or None."""
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    ms = (moment - _EPOCH) // _MS
    return ms if _spelled(ms) == at else None


#: the pack decoder's second spelled once (``eventstore/timetext.py``): a pack's events
#: come a few milliseconds apart
_spelled = Seconds().spell


def deflate(text: bytes) -> bytes:
    """A body as format 4 stores it: a zlib stream against ``ZDICT_4``."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 15, zdict=ZDICT_4)
    return packer.compress(text) + packer.flush()


def inflate(body: bytes) -> bytes:
    """A stored body's JSON, whichever format: formats 1 to 3 were deflated without a
    dictionary, and the zlib header says which (its FDICT bit)."""
    if len(body) > 1 and body[1] & _FDICT:
        unpacker = zlib.decompressobj(zdict=ZDICT_4)
        return unpacker.decompress(body) + unpacker.flush()
    return zlib.decompress(body)


def encode(entries: Sequence[Entry]) -> list[Any]:
    """Format 2's columns of one segment's deltas."""
    steps: list[int] = []
    times: list[int | str] = []
    ids: list[int | str] = []
    bits: list[int | str] = []
    last_bits: int | None = None
    data: list[Any] = []
    previous: int | None = None
    for step, event_id, at, body in entries:
        steps.append(step)
        ms = _ms_of(at)
        times.append(ms - previous if ms is not None and previous is not None else at)
        previous = ms
        if ms is not None and _UUID.fullmatch(event_id):
            digits = event_id.replace("-", "")
            ids.append(int(digits[:12], 16) - ms)
            rest = int(digits[12:], 16)
            rise = None if last_bits is None else rest - last_bits
            if rise is not None and 0 <= rise < _SMALL_STEP:
                bits.append(rise)
            else:
                raw = rest.to_bytes(10, "big")
                bits.append(base64.urlsafe_b64encode(raw).decode().rstrip("="))
            last_bits = rest
        else:
            ids.append(event_id)
        text = body.get("text") if len(body) == 1 else None
        data.append(text if isinstance(text, str) else body)
    return [steps, times, ids, bits, data]


def decode(columns: Sequence[Any]) -> Iterator[Entry]:
    """The entries of one segment's columns (format 2's five, the first five of
    format 3's), in order."""
    steps, times, ids, bits, data = columns[:5]
    previous: int | None = None
    at = ""
    pieces = iter(bits)
    last_bits = 0
    for step, when, event_id, body in zip(steps, times, ids, data, strict=True):
        if isinstance(when, str):
            at, previous = when, _ms_of(when)
        else:
            if previous is None:
                raise ValueError("a pack's time step follows no time")
            previous += when
            at = _spelled(previous)
        if isinstance(event_id, int):
            if previous is None:
                raise ValueError("a pack's id is relative to no time")
            piece = next(pieces)
            if isinstance(piece, int):
                rest = last_bits + piece
            else:
                rest = int.from_bytes(base64.urlsafe_b64decode(piece + "=="), "big")
            last_bits = rest
            digits = f"{previous + event_id:012x}{rest:020x}"
            event_id = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
        yield step, event_id, at, {"text": body} if isinstance(body, str) else body


def times(
    columns: Sequence[Any], position: int, after: int, bound: int
) -> Iterator[tuple[int, str]]:
    """``(position, time)`` of one segment's deltas in ``(after, bound]``, from its first
    position and its steps and times columns alone, a time spelled only where asked.

    ``as_of=<time>`` reads every pack live at that time (one per run then streaming),
    and only a few positions of each matter: decoding every id and text of them,
    and spelling every time, was most of the lookup (7.2 of 8.7 ms a request at 10^4
    events, load 8).
    """
    steps, spans = columns[0], columns[1]
    previous: int | None = None
    for step, when in zip(steps, spans, strict=True):
        position += step
        if position > bound:  # positions only rise along a segment
            return
        if isinstance(when, str):
            previous = _ms_of(when)
            if position > after:
                yield position, when
            continue
        if previous is None:
            raise ValueError("a pack's time step follows no time")
        previous += when
        if position > after:
            yield position, _spelled(previous)
