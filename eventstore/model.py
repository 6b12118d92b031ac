"""Records of the log and their canonical encoding.

Pure: no I/O. Projections import these records; backends store them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, cast

from sessionstream.core.ids import uuid7
from sessionstream.core.jsonenc import encoder
from sessionstream.eventstore.hashcodec import decode_hash
from sessionstream.eventstore.textcodec import decode
from sessionstream.eventstore.timetext import Seconds

#: ``expected_version`` meaning "do not check".
ANY_VERSION: int | None = None
#: ``expected_version`` meaning "the stream must not exist yet".
NO_STREAM = 0

GENESIS_HASH = "0" * 64


def new_event_id() -> str:
    """A time-ordered (version 7) UUID, spelled as ``str(uuid.UUID(...))`` spells it.

    The id is the key of the events' unique index: a random one dirtied a
    random leaf page per event, a time-ordered one appends at the index's
    right edge (``core/ids.py``).
    """
    return uuid7()


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event a command wants to append.

    ``event_id`` makes appends idempotent: appending an event whose id is
    already in the log is a no-op that returns the stored record.
    ``correlation_id`` names the stream this event also belongs to for
    subscribers (a run's events carry ``session-<id>``), so a session channel
    can tail a session and all of its runs with one indexed query.
    """

    type: str
    data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    event_id: str = field(default_factory=new_event_id)
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True, init=False)
class RecordedEvent:
    """An event as the log holds it.

    Frozen, but built by its own ``__init__``: the one a frozen dataclass
    generates sets each of the eleven fields through ``object.__setattr__``,
    1.4 us an event, the largest single cost of recording a bulk append after
    encoding; storing straight into the slots takes a little over half that
    (docs/explanation/append-path.md).
    """

    position: int
    stream_id: str
    version: int
    event_id: str
    type: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    correlation_id: str | None
    recorded_at: str
    hash: str
    #: ``data`` and ``metadata`` in canonical JSON, when the append that recorded
    #: this event encoded them for its hash: the row stores the same text
    encoded: tuple[str, str] | None = field(default=None, compare=False, repr=False)

    def __init__(
        self,
        position: int,
        stream_id: str,
        version: int,
        event_id: str,
        type: str,
        data: dict[str, Any],
        metadata: dict[str, Any],
        correlation_id: str | None,
        recorded_at: str,
        hash: str,
        encoded: tuple[str, str] | None = None,
    ) -> None:
        a, b, c, d, e, f, g, h, i, j, k = _RECORDED_SLOTS
        a(self, position)
        b(self, stream_id)
        c(self, version)
        d(self, event_id)
        e(self, type)
        f(self, data)
        g(self, metadata)
        h(self, correlation_id)
        i(self, recorded_at)
        j(self, hash)
        k(self, encoded)

    @property
    def keys(self) -> tuple[str, ...]:
        """Subscription keys this event is delivered under."""
        if self.correlation_id is None:
            return (self.stream_id,)
        return (self.stream_id, self.correlation_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "stream_id": self.stream_id,
            "version": self.version,
            "event_id": self.event_id,
            "type": self.type,
            "data": self.data,
            "metadata": self.metadata,
            "correlation_id": self.correlation_id,
            "recorded_at": self.recorded_at,
            "hash": self.hash,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RecordedEvent:
        return cls(
            position=int(obj["position"]),
            stream_id=str(obj["stream_id"]),
            version=int(obj["version"]),
            event_id=str(obj["event_id"]),
            type=str(obj["type"]),
            data=dict(obj["data"]),
            metadata=dict(obj.get("metadata") or {}),
            correlation_id=obj.get("correlation_id"),
            recorded_at=str(obj["recorded_at"]),
            hash=str(obj["hash"]),
        )


#: the setters of ``RecordedEvent``'s slots, in field order (its ``__init__`` calls them)
_RECORDED_SLOTS: tuple[Callable[[Any, Any], None], ...] = tuple(
    getattr(RecordedEvent, f.name).__set__ for f in fields(RecordedEvent)
)


@dataclass(frozen=True, slots=True)
class Fence:
    """A run lease's epoch a write is allowed under (``eventstore/leases.py``)."""

    run_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class AppendRequest:
    stream_id: str
    events: tuple[NewEvent, ...]
    expected_version: int | None = ANY_VERSION
    #: with leases, the transaction writes only while this is its run's lease epoch
    fence: Fence | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    stream_id: str
    events: tuple[RecordedEvent, ...]
    #: the stream's version after the append
    version: int
    #: True when every event id was already in the log (an idempotent retry)
    duplicate: bool = False
    #: the read-model documents the caller's appends folded to, as committed (none
    #: for a retry): a command answers from them instead of reading them back
    docs: tuple[Doc, ...] = ()

    def doc(self, kind: str, key: str) -> Doc | None:
        """The ``kind`` document ``key`` this append folded, if it did."""
        return next((d for d in self.docs if d.key == key and d.kind == kind), None)


@dataclass(frozen=True, slots=True)
class DocIndex:
    """The columns a read-model document is listed and filtered by."""

    owner: str | None = None
    parent: str | None = None
    created_at: str | None = None
    active: bool = False
    deleted: bool = False
    #: False: the store keeps no row for it and ``EventStore.get_doc`` folds it from its
    #: stream when asked (a finished run, docs/explanation/scale.md). Not a column, so
    #: not compared: a row an older build kept is the same document as the fold
    kept: bool = field(default=True, compare=False)


@dataclass(frozen=True, slots=True)
class Doc:
    """A read-model document: the fold of one key's events, as of ``version``."""

    kind: str
    key: str
    body: dict[str, Any]
    version: int  # version of the source stream that produced it
    position: int  # global position of the last event folded in
    index: DocIndex = DocIndex()
    #: what readers derive from this document (a response body, say), kept with
    #: it: a Doc never changes, and a cached one is read many times
    derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def split_kept(docs: Iterable[Doc]) -> tuple[list[Doc], list[tuple[str, str]]]:
    """The documents a write upserts, and the ``(kind, key)`` of those whose row it
    removes: not kept (``DocIndex.kept``), so folded from their stream when read."""
    kept: list[Doc] = []
    unkept: list[tuple[str, str]] = []
    for doc in docs:
        if doc.index.kept:
            kept.append(doc)
        else:
            unkept.append((doc.kind, doc.key))
    return kept, unkept


#: a JSON string as the canonical encoder spells it (not ASCII-escaped)
_string = json.encoder.encode_basestring

#: sorted keys, no spaces, text as it is: built once (``core/jsonenc.py``), since
#: encoding was the largest share of an append's CPU
canonical_json: Callable[[Any], str] = encoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":")
)
canonical_json.__doc__ = "One spelling per value, so hashes are reproducible anywhere."


def event_hash(
    prev_hash: str,
    *,
    stream_id: str,
    version: int,
    event_id: str,
    type: str,
    data: dict[str, Any],
    metadata: dict[str, Any],
    recorded_at: str,
) -> str:
    """sha256 over the previous hash in the stream and this event's canonical bytes."""
    body = canonical_json(
        [stream_id, version, event_id, type, data, metadata, recorded_at]
    ).encode()
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


def record_event(
    new: NewEvent, *, position: int, stream_id: str, version: int, prev_hash: str, at: str
) -> RecordedEvent:
    """A new event as stored: its place in the log and its link in the stream's chain."""
    request = AppendRequest(stream_id, (new,))
    return record_request(
        request, head=position - 1, version=version - 1, prev_hash=prev_hash, at=at
    )[0]


def record_request(
    request: AppendRequest, *, head: int, version: int, prev_hash: str, at: str
) -> list[RecordedEvent]:
    """A request's events as stored, after log position ``head`` and its stream's
    ``version`` whose hash is ``prev_hash``.

    ``data`` and ``metadata`` are encoded once, and the hashed bytes are put
    together from those two texts: exactly what :func:`event_hash` encodes
    (a JSON array with these separators is its items joined by commas), at
    half the encoding. The parts every event of the request shares (stream
    id, time) are spelled once. Encoding was the largest share of a bulk
    append's CPU (docs/explanation/append-path.md); the row then stores the
    same canonical text.
    """
    stream_id = request.stream_id
    prefix = f"[{_string(stream_id)},"
    suffix = f",{_string(at)}]"
    encode, string, sha256 = canonical_json, _string, hashlib.sha256
    records: list[RecordedEvent] = []
    append = records.append
    last_type, spelled_type = None, ""  # a request's events mostly share their type
    for new in request.events:
        head += 1
        version += 1
        data = encode(new.data)
        metadata = encode(new.metadata)
        event_id, type_ = new.event_id, new.type
        if type_ is not last_type:
            last_type, spelled_type = type_, string(type_)
        body = (
            f"{prev_hash}{prefix}{version},{string(event_id)},{spelled_type},"
            f"{data},{metadata}{suffix}"
        )
        prev_hash = sha256(body.encode()).hexdigest()
        append(
            RecordedEvent(
                head,
                stream_id,
                version,
                event_id,
                type_,
                new.data,
                new.metadata,
                new.correlation_id,
                at,
                prev_hash,
                (data, metadata),
            )
        )
    return records


def recompute_hash(prev_hash: str, event: RecordedEvent) -> str:
    """The hash ``event`` should have after ``prev_hash``.

    An event that carries its canonical texts (``encoded``: an append's, or
    one a pack gave back, ``eventstore/packing.py``) is hashed over those, as
    :func:`record_request` hashes it: ``verify`` checks every packed event
    after unpacking computed it, and encoding its data a second time was most
    of that check. The bytes hashed are the same either way.
    """
    if event.encoded is not None:
        data, metadata = event.encoded
        body = (
            f"{prev_hash}[{_string(event.stream_id)},{event.version},{_string(event.event_id)},"
            f"{_string(event.type)},{data},{metadata},{_string(event.recorded_at)}]"
        )
        return hashlib.sha256(body.encode()).hexdigest()
    return event_hash(
        prev_hash,
        stream_id=event.stream_id,
        version=event.version,
        event_id=event.event_id,
        type=event.type,
        data=event.data,
        metadata=event.metadata,
        recorded_at=event.recorded_at,
    )


#: the writer's clock: its second spelled once (``eventstore/timetext.py``)
_NOW = Seconds()


def utc_now() -> str:
    """RFC 3339 UTC with milliseconds and a ``Z``: the one timestamp spelling. Every
    batch asks once, on the writer thread."""
    return _NOW.spell(time.time_ns() // 1_000_000)


def row_to_event(row: Sequence[Any]) -> RecordedEvent:
    """An event from a row in ``EVENT_COLUMNS`` order (both backends select that)."""
    return RecordedEvent(
        position=row[0],
        stream_id=row[1],
        version=row[2],
        event_id=row[3],
        type=row[4],
        data=json.loads(decode(row[5])),
        metadata=json.loads(decode(row[6])),
        correlation_id=row[7],
        recorded_at=row[8],
        hash=decode_hash(row[9]),
    )


class StoredEvent(RecordedEvent):
    """An event read from the log by a page, whose ``data`` is parsed on first use.

    Pages mostly send events on as JSON, and the row already holds that JSON:
    parsing it only to encode it again is what made memory follow stored data.
    A stored 3 MB ``[{}, {}, ...]`` parses into a million dicts (~90 MB), so
    a 9-event page took 635 MB and every channel catching up from 0 as much
    again. ``data_json`` hands the stored text on untouched; ``data`` still
    works, parsing it once. Equal to the ``RecordedEvent`` with the same fields.
    """

    __slots__ = ("_raw",)
    _raw: str

    @property
    def data(self) -> dict[str, Any]:
        value: dict[str, Any] | None = _DATA_SLOT.__get__(self, StoredEvent)
        if value is None:
            value = json.loads(self._raw)
            _DATA_SLOT.__set__(self, value)
        return value

    @data.setter
    def data(self, value: dict[str, Any] | None) -> None:
        # the dataclass __init__ sets every field; None means "not parsed yet"
        _DATA_SLOT.__set__(self, value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordedEvent):
            return NotImplemented
        return _compared(self) == _compared(other)

    __hash__ = RecordedEvent.__hash__

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> StoredEvent:
        """An event from a row in ``EVENT_COLUMNS`` order, its data left as the row has it."""
        event = cls(
            position=row[0],
            stream_id=row[1],
            version=row[2],
            event_id=row[3],
            type=row[4],
            data=cast("dict[str, Any]", None),
            metadata=json.loads(decode(row[6])),
            correlation_id=row[7],
            recorded_at=row[8],
            hash=decode_hash(row[9]),
        )
        object.__setattr__(event, "_raw", decode(row[5]))
        return event


#: the slot ``RecordedEvent.data`` lives in, under ``StoredEvent``'s property
_DATA_SLOT: Any = RecordedEvent.__dict__["data"]


def _compared(event: RecordedEvent) -> tuple[Any, ...]:
    return (
        event.position,
        event.stream_id,
        event.version,
        event.event_id,
        event.type,
        event.data,
        event.metadata,
        event.correlation_id,
        event.recorded_at,
        event.hash,
    )


def data_json(event: RecordedEvent) -> str | None:
    """JSON text of ``event.data`` the event already holds, if any (no encoding, no parse).

    A page's event holds its row's text; a just-appended one the canonical
    text its hash was computed over. Either spells the same value.
    """
    raw: str | None = getattr(event, "_raw", None)
    if raw is not None:
        return raw
    return event.encoded[0] if event.encoded is not None else None


def data_size(event: RecordedEvent) -> int:
    """About how many bytes ``event`` takes as JSON, for byte-budgeted pages and caches."""
    text = data_json(event)
    return len(text) if text is not None else len(canonical_json(event.data))


def _utf8_len(text: str) -> int:
    # a lone surrogate is counted, not raised: the append it belongs to is refused (4xx)
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def stored_bytes(event: RecordedEvent | NewEvent) -> int:
    """UTF-8 bytes of an event's canonical data and metadata: what it costs to store.

    The same number whether the event is about to be appended, was just
    appended (its hash's text is reused) or is refolded from the log, so a
    count kept from it (the user quota) rebuilds to exactly itself.
    """
    encoded = event.encoded if isinstance(event, RecordedEvent) else None
    if encoded is None:
        encoded = (canonical_json(event.data), canonical_json(event.metadata))
    return _utf8_len(encoded[0]) + _utf8_len(encoded[1])


def row_to_doc(row: Sequence[Any]) -> Doc:
    return Doc(
        kind=row[0],
        key=row[1],
        index=DocIndex(
            owner=row[2],
            parent=row[3],
            created_at=row[4],
            active=bool(row[5]),
            deleted=bool(row[6]),
        ),
        version=row[7],
        position=row[8],
        body=json.loads(decode(row[9])),
    )
