"""Packed runs and sessions: a finished run's events, and a session's past turns, kept as
one compressed row per stream and block.

A token delta carries ~20 bytes of text in a ~360-byte row with an entry in
four indexes, and a chat turn makes about a hundred of them; the run's other
events (``run.started``, ``message.completed``, the ``.updated`` twins,
progress) are rows of a few hundred bytes each with the same four index
entries. Once a run has ended (its stream holds a terminal event, so nothing
more is appended to it), it is *compacted*: every event before its terminal
one, ``run.created`` included, moves out of ``events`` into ``packs``, one
row per run and block of ``2**BLOCK_BITS`` positions, holding
zlib-compressed JSON of each event's position, event id, time, type, data and
metadata (format 3; formats 1 and 2 packed the deltas alone and are still
read). A run compacted by an older build (its ``run.created`` a row, or its
other events too) is left as it is: only a stream whose rows are versions 1
to its last is packed.

A session's stream is packed too, at the end of each turn (its
``run.released``): every event but the session's last one moves into packs,
so a turn's claim, messages, revisions and release cost their data and a few
bytes each instead of a row and four index entries apiece. When a stream is
packed, and how much of a session is written again at each turn, is
compaction's policy (``eventstore/compaction.py``); this module is the format
it writes and every read decodes.

The terminal event stays a row (a session's last event likewise). The
merged reads rely on every packed event preceding a stored event of its
stream that matches the same keys, so an
event correlated otherwise than the terminal one stays a row too (a key
filter must find the terminal after it). A retried append's ids may name
packed events, so the writers look them up in the packs too
(``compaction.runs_to_unpack`` names the runs).

Nothing of what the log says changes, because a pack is read back as exactly
the events it replaced: the same positions, versions, ids, times, types, data
and metadata, and the same hashes (``unpack``). The backends' ``read_all``,
``read_stream``, ``position_of``, the Merkle tree's leaves and ``rebuild``
merge packs with the stored rows (by the rules of ``eventstore/packmerge.py``),
so replay, resume by ``seq``, ``as_of``, export and the signed checkpoints see
the log as it was appended. Positions are never reused, so the Merkle tree and every
checkpoint signed before a compaction still verify after it.

Hashes are recomputed from the packed content, with two anchors stored
verbatim. A *segment* (the packed events between two stored events of the
run, within one block) keeps the hash it chains onto (the genesis hash when
it starts the stream, at ``run.created``) and the hash its last
event had: the digest of what it replaced, since each hash covers everything
before it in the stream. The last event is given that stored digest, not a
recomputed one, so ``verify`` (which recomputes each event's hash from its
stored predecessor) reports an edit to any packed event at the segment's
last event; and the stored event after the segment still chains onto the
digest. A pack is checked against the rows it replaces before they are
deleted (``pack_stream``), so a packing bug refuses to compact instead of
losing an event.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sessionstream.core.vocabulary import RUN_PREFIX, SESSION_PREFIX, TERMINAL, EventType
from sessionstream.eventstore import packcodec
from sessionstream.eventstore.model import (
    GENESIS_HASH,
    RecordedEvent,
    canonical_json,
)

#: a JSON string as the canonical encoder spells it (not ASCII-escaped)
_string = json.encoder.encode_basestring

#: a pack holds one run's events within 4096 consecutive positions
BLOCK_BITS = 12
#: what formats 1 and 2 packed (their bodies name it once)
DELTA_TYPE = EventType.MESSAGE_DELTA
#: beyond every position
NO_BOUND = 1 << 62
#: the events a bounded read keeps of a pack: ``(after, bound, after_version)``, positions
#: in ``(after, bound]`` and versions above ``after_version``
Window = tuple[int, int, int]
#: what ``pack_stream`` writes (``eventstore/packcodec.py``); formats 1 to 3 are still read
FORMAT = 4
READABLE = (1, 2, 3, 4)


@dataclass(frozen=True, slots=True)
class Pack:
    """One stored pack: its key and filter columns, and the compressed body."""

    stream_id: str
    block: int
    correlation_id: str | None
    first_position: int
    last_position: int
    count: int
    body: bytes
    #: the times of its first and last event: ``as_of=<time>`` reads only packs it cuts
    first_at: str = ""
    last_at: str = ""


def block_of(position: int) -> int:
    return position >> BLOCK_BITS


def may_hold_packs(stream_id: str) -> bool:
    """Only run and session streams are compacted: other streams' reads skip the packs."""
    return stream_id.startswith((RUN_PREFIX, SESSION_PREFIX))


def write_body(obj: Any) -> bytes:
    """A pack's body as stored (``packcodec.deflate``)."""
    # ASCII escapes: a lone surrogate in a text survives the round trip
    return packcodec.deflate(json.dumps(obj, separators=(",", ":")).encode())


def read_body(body: bytes) -> Any:
    """A stored pack's body, whichever format."""
    return json.loads(packcodec.inflate(bytes(body)))


class _Segment:
    """Consecutive packed events of one block: the hash they chain onto and, once full,
    their digest."""

    __slots__ = ("block", "closed", "digest", "entries", "first_at", "first_position",
                 "first_version", "kinds", "last_at", "last_position", "metas",
                 "prev")  # fmt: skip

    def __init__(self, prev: str, first: RecordedEvent) -> None:
        self.prev = prev
        self.block = block_of(first.position)
        self.first_version = first.version
        self.first_position = self.last_position = first.position
        self.entries: list[packcodec.Entry] = []
        self.kinds: list[int] = []
        self.metas: list[list[Any]] = []
        self.digest = ""
        self.last_at = ""
        self.first_at = first.recorded_at
        self.closed = False

    def add(self, event: RecordedEvent, kind: int, metadata: str | None) -> None:
        """``kind``: the index of its type in the pack's ``types``; ``metadata``: its
        canonical text where it is not the pack's (None where it is)."""
        step = event.position - self.last_position
        if metadata is not None:
            self.metas.append([len(self.entries), event.metadata])
        self.kinds.append(kind)
        self.entries.append((step, event.event_id, event.recorded_at, event.data))
        self.last_position, self.last_at, self.digest = (
            event.position,
            event.recorded_at,
            event.hash,
        )

    def encoded(self) -> list[Any]:
        """Format 4's columns: format 3's, a text-alone data spelled as its length in
        one ``text`` column of the segment's texts joined (so a later copy of the reply,
        ``message.completed``'s, deflates to a few back-references, and no quotes and
        commas sit between tokens)."""
        columns = packcodec.encode(self.entries)
        pieces: list[str] = []
        data: list[Any] = []
        for spelled in columns[4]:
            if isinstance(spelled, str):
                pieces.append(spelled)
                data.append(len(spelled))
            else:
                data.append(spelled)
        columns[4] = data
        columns += [self.kinds, self.metas, "".join(pieces)]
        return [self.prev, self.digest, self.first_version, self.first_position, columns]


def packed_of(events: Sequence[RecordedEvent]) -> list[RecordedEvent]:
    """The events of a stream that packs hold (``events``: all of it, in version order):
    none unless it is whole (versions 1 to its last: a run compacted before, read
    from its rows alone, has gaps and is left as it is) and, for a run, has ended;
    else every event but its last one and any correlated otherwise than the last
    one (see the module's doc for why those stay)."""
    if not events or events[-1].version - events[0].version + 1 != len(events):
        return []
    last = events[-1]
    if not may_hold_packs(last.stream_id):
        return []  # its reads would never look for them
    if last.stream_id.startswith(RUN_PREFIX) and (
        last.type not in TERMINAL or events[0].version != 1
    ):
        return []  # a live run: its rows are what its subscribers read
    return [e for e in events[:-1] if e.correlation_id == last.correlation_id]


def _most_common(texts: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for text in texts:
        counts[text] = counts.get(text, 0) + 1
    return max(counts, key=counts.__getitem__)


def _key(stream_id: str | None) -> str:
    """The id a stream id names after its kind (``run-<id>``, ``session-<id>``)."""
    return "" if stream_id is None else stream_id.partition("-")[2]


def _refer(
    metadata: dict[str, Any], stream_id: str, correlation_id: str | None
) -> tuple[dict[str, Any], list[list[Any]]]:
    """The usual metadata with each value that is the run's id or its session's (a run
    task's ``actor`` and ``session_id``, ``services/runlog.py``) left out as null, and
    where they were: ``[path, 0]`` for the stream's id, ``[path, 1]`` for the
    correlation's. Both ids are the pack's own columns already."""
    names = [_key(stream_id), _key(correlation_id)]
    refs: list[list[Any]] = []

    def walk(value: dict[str, Any], path: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(v, dict):
                out[k] = walk(v, [*path, k])
            elif isinstance(v, str) and v and v in names:
                refs.append([[*path, k], names.index(v)])
                out[k] = None
            else:
                out[k] = v
        return out

    return walk(metadata, []), refs


def _resolve(
    metadata: dict[str, Any], refs: list[list[Any]], stream_id: str, correlation_id: str | None
) -> dict[str, Any]:
    """The usual metadata :func:`_refer` spelled, whole again."""
    if not refs:
        return metadata
    names = [_key(stream_id), _key(correlation_id)]
    whole: dict[str, Any] = json.loads(json.dumps(metadata))
    for path, which in refs:
        place = whole
        for k in path[:-1]:
            place = place[k]
        place[path[-1]] = names[which]
    return whole


def pack_stream(events: Sequence[RecordedEvent], prev: str = GENESIS_HASH) -> list[Pack]:
    """The packs replacing the packed events (:func:`packed_of`) of a finished stream
    (``events``: all of it, in version order, as stored, or its events from some version
    on, ``prev`` then being the hash of the event before them), or none."""
    packed = packed_of(events)
    if not packed:
        return []
    first = packed[0]
    moving = {e.position for e in packed}
    # the type and metadata most events have are spelled once; the others per event
    type_counts: dict[str, int] = {}
    for e in packed:
        type_counts[e.type] = type_counts.get(e.type, 0) + 1
    types = sorted(type_counts, key=lambda t: (-type_counts[t], t))
    kind_of = {t: i for i, t in enumerate(types)}
    meta_texts = [canonical_json(e.metadata) for e in packed]
    usual = _most_common(meta_texts)
    meta_of = dict(zip((e.position for e in packed), meta_texts, strict=True))
    segments: list[_Segment] = []
    for event in events:
        if event.position in moving:
            segment = segments[-1] if segments else None
            if segment is None or segment.closed or segment.block != block_of(event.position):
                segment = _Segment(prev, event)
                segments.append(segment)
            text = meta_of[event.position]
            segment.add(event, kind_of[event.type], None if text == usual else text)
        elif segments:
            segments[-1].closed = True
        prev = event.hash
    metadata, refs = _refer(json.loads(usual), first.stream_id, first.correlation_id)
    packs: list[Pack] = []
    for block in sorted({s.block for s in segments}):
        mine = [s for s in segments if s.block == block]
        body = {
            "format": FORMAT,
            "types": types,
            "metadata": metadata,
            "refs": refs,
            "segments": [s.encoded() for s in mine],
        }
        packs.append(
            Pack(
                first.stream_id,
                block,
                first.correlation_id,
                mine[0].first_position,
                mine[-1].last_position,
                sum(len(s.entries) for s in mine),
                write_body(body),
                mine[0].first_at,
                mine[-1].last_at,
            )
        )
    unpacked = [e for p in packs for e in unpack(p.stream_id, p.correlation_id, p.body)]
    if sorted(unpacked, key=lambda e: e.position) != packed:
        raise AssertionError(f"packing {first.stream_id} would not give back its events")
    return packs


def _body(obj: Any, stream_id: str) -> Any:
    if obj.get("format") not in READABLE:
        raise ValueError(f"a pack of {stream_id} has an unknown format {obj.get('format')}")
    return obj


def _entries(obj: Any, packed: Any) -> Iterator[packcodec.Entry]:
    """One segment's events, whichever format spelled them."""
    if obj["format"] != 1:
        yield from packcodec.decode(packed)
        return
    at = ""  # format 1: [step, event id, time ("" when the previous delta's), data]
    for step, event_id, when, data in packed:
        at = when or at
        yield step, event_id, at, data


def _split_text(columns: list[Any]) -> list[Any]:
    """Format 4's columns with each text-alone data back as its text (format 3's)."""
    text, at = columns[7], 0
    data: list[Any] = []
    for spelled in columns[4]:
        if type(spelled) is int:
            data.append(text[at : at + spelled])
            at += spelled
        else:
            data.append(spelled)
    if at != len(text):
        raise ValueError("a pack's texts do not add up to its text column")
    return [*columns[:4], data, *columns[5:]]


def unpack(
    stream_id: str,
    correlation_id: str | None,
    body: bytes,
    window: Window = (0, NO_BOUND, 0),
) -> list[RecordedEvent]:
    """The events a pack replaced, hashes recomputed between its stored anchors; only
    those in ``window`` (:data:`Window`), or all of them.

    The hashed bytes are put together as ``model.record_event`` does, from the
    canonical text of the data and of the metadata (the pack's usual metadata
    encoded once): a page of catch-up unpacks hundreds of events. A bounded
    read pays only for what it keeps: a segment wholly outside the window is
    never decoded (each segment stores the hash it chains onto), and decoding
    stops at the bound; the events of a segment before the window that the
    ones inside it chain onto are hashed, not built.
    """
    after, bound, after_version = window
    obj = _body(read_body(body), stream_id)
    whole, joined = obj["format"] >= 3, obj["format"] >= 4
    types: list[str] = obj["types"] if whole else [obj["type"]]
    usual = obj["metadata"]
    if joined:
        usual = _resolve(usual, obj["refs"], stream_id, correlation_id)
    usual_json = canonical_json(usual)
    head = f"[{_string(stream_id)},"
    type_parts = [f",{_string(t)}," for t in types]
    out: list[RecordedEvent] = []
    for prev, digest, version, position, packed in obj["segments"]:
        if obj["format"] != 1:
            steps: list[int] = packed[0]
            if (
                version + len(steps) - 1 <= after_version
                or position + sum(steps) <= after
                or position + steps[0] > bound
            ):
                continue
        if joined:
            packed = _split_text(packed)
        kinds: list[int] = packed[5] if whole else []
        odd: dict[int, Any] = {i: m for i, m in packed[6]} if whole else {}
        last = (len(packed[0]) if obj["format"] != 1 else len(packed)) - 1
        spelled, at_part = "", ""
        for i, (step, event_id, at, data) in enumerate(_entries(obj, packed)):
            position += step
            if position > bound:
                break
            if at != spelled:
                spelled, at_part = at, _string(at)
            data_json = canonical_json(data)
            kind = kinds[i] if whole else 0
            if i in odd:
                metadata = odd[i]
                meta_json = canonical_json(metadata)
            else:
                metadata, meta_json = usual, usual_json
            if i == last:
                own = digest
            else:
                hashed = (
                    f"{head}{version},{_string(event_id)}{type_parts[kind]}"
                    f"{data_json},{meta_json},{at_part}]"
                )
                own = hashlib.sha256(prev.encode() + hashed.encode()).hexdigest()
            if position > after and version > after_version:
                fields = (position, stream_id, version, event_id, types[kind], data, metadata)
                out.append(RecordedEvent(*fields, correlation_id, at, own, (data_json, meta_json)))
            prev = own
            version += 1
    return out


def times_of(
    rows: Iterable[tuple[str, str | None, bytes]], after: int = 0, bound: int = NO_BOUND
) -> list[tuple[int, str]]:
    """``(position, recorded_at)`` of the packed events in ``(after, bound]``, without
    rebuilding the events (``as_of=<time>`` needs no more)."""
    found: list[tuple[int, str]] = []
    for stream_id, _, body in rows:
        obj = _body(read_body(body), stream_id)
        for _, _, _, position, packed in obj["segments"]:
            if obj["format"] != 1:
                found.extend(packcodec.times(packed, position, after, bound))
                continue
            for step, _, at, _ in _entries(obj, packed):
                position += step
                if after < position <= bound:
                    found.append((position, at))
    return found


def unpack_all(
    rows: Iterable[tuple[str, str | None, bytes]], window: Window = (0, NO_BOUND, 0)
) -> list[RecordedEvent]:
    """Every event of ``(stream_id, correlation_id, body)`` pack rows, or those in
    ``window``."""
    return [
        e
        for stream_id, corr, body, *_ in rows
        for e in unpack(stream_id, corr, bytes(body), window)
    ]
