"""Moving the log between stores as NDJSON: one ``RecordedEvent.to_json`` per line.

An export is the log itself, not a re-encoding of the read models: every
event keeps its position, stream version, event id, ``recorded_at`` and hash,
so an imported copy verifies with the same hashes and rebuilds to identical
rows. Scopes:

- the whole log;
- one campaign: the campaign stream, its sessions (deleted ones too) and
  their runs;
- one session: the session stream and its runs.

A scoped export keeps the original positions, which therefore skip the
events of other campaigns or sessions (``verify --allow-gaps`` accepts that).
Import goes into an empty store only, in position order, in chunks through
:meth:`EventStore.import_events`, after the whole file has been read and
checked once, so a malformed line is reported before anything is written.
Export and import stream: a page or a chunk of events at a time, never the
whole log (the check holds each stream's version and a filter of the ids).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from sessionstream.core.errors import ValidationFailed
from sessionstream.core.vocabulary import campaign_stream, session_stream
from sessionstream.eventstore.audit import HEADER, PROOF, header_line, proof_field
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.eventstore.tree import StoredCheckpoint

PAGE = 5000
#: stored JSON an export reads at a time (a page holds at least one event)
PAGE_BYTES = 4 << 20
#: keys per ``read_all`` call; a bigger scope reads the log and filters
MAX_KEYS = 400


@dataclass(frozen=True, slots=True)
class Scope:
    """Which events an export takes: ``keys`` None means the whole log."""

    name: str
    keys: frozenset[str] | None


async def campaign_scope(store: EventStore, campaign_id: str) -> Scope:
    """The campaign stream and every session ever created in it (runs follow by key)."""
    sessions = await store.list_docs("session", parent=campaign_id, include_deleted=True)
    keys = {campaign_stream(campaign_id)} | {session_stream(d.key) for d in sessions}
    return Scope(f"campaign {campaign_id}", frozenset(keys))


def session_scope(session_id: str) -> Scope:
    return Scope(f"session {session_id}", frozenset({session_stream(session_id)}))


def whole_log() -> Scope:
    return Scope("the whole log", None)


async def events_in(
    store: EventStore, scope: Scope, head: int | None = None
) -> AsyncIterator[RecordedEvent]:
    """The scope's events in position order up to ``head`` (today's), a page at a time.

    A page ends at ``PAGE`` events or ``PAGE_BYTES`` of stored JSON, whichever
    comes first, and each event is let go once the caller has it (its data
    parsed only if the caller reads it): an export holds one page of the log.
    """
    if head is None:
        head = await store.head_position()
    keys = scope.keys
    wide = keys is not None and len(keys) > MAX_KEYS
    after = 0
    while after < head:
        page: list[RecordedEvent] = list(
            await store.read_page(
                after,
                max_rows=PAGE,
                max_bytes=PAGE_BYTES,
                keys=None if wide else keys,
                to_position=head,
            )
        )
        if not page:
            return
        after = page[-1].position
        page.reverse()
        while page:
            event = page.pop()
            if not wide or keys is None or any(k in keys for k in event.keys):
                yield event


def encode(event: RecordedEvent) -> str:
    return json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":"))


async def export(
    store: EventStore, scope: Scope, out: IO[str], checkpoint: StoredCheckpoint | None = None
) -> int:
    """Write the scope's events as NDJSON; returns how many.

    With a ``checkpoint`` the export is what an auditor needs offline
    (``eventstore/audit.py``): the signed note on the first line, the events up
    to its size, and in a scoped export each event's inclusion proof.
    """
    count = 0
    scoped = scope.keys is not None
    if checkpoint is not None:
        out.write(header_line(checkpoint.note, scoped=scoped) + "\n")
    head = checkpoint.size if checkpoint is not None else None
    async for event in events_in(store, scope, head):
        if checkpoint is not None and scoped:
            obj = event.to_json()
            obj[PROOF] = proof_field(await store.tree.inclusion(event.position, checkpoint.size))
            out.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
        else:
            out.write(encode(event) + "\n")
        count += 1
    return count


def decode_lines(lines: Iterable[str]) -> Iterator[RecordedEvent]:
    """Parse NDJSON events, naming the line of the first that is not one."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise TypeError("not a JSON object")
            if number == 1 and HEADER in obj:  # the signed checkpoint: audit.py reads it
                continue
            event = RecordedEvent.from_json(obj)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValidationFailed(f"line {number} is not an exported event: {exc}") from exc
        if not isinstance(event.data, dict) or not isinstance(event.metadata, dict):
            raise ValidationFailed(f"line {number}: data and metadata must be objects")
        yield event


@dataclass(slots=True)
class ImportPlan:
    """What a checked file holds: counts to report before writing anything."""

    events: int = 0
    streams: int = 0
    first: int = 0
    last: int = 0
    gaps: int = 0


class IdFilter:
    """Event ids seen so far, in about a byte and a half an id: Bloom filters that double.

    A set of 10^6 ids held ~100 MB; this answers "certainly new" or "perhaps seen"
    (about one new id in a hundred is a false "perhaps"), and the few perhaps-seen
    ids are settled exactly by a second read of the file (:func:`check`). The
    slots come from ``hash()``: salted per process, which is all one check needs.
    """

    #: bits per id at capacity, and slots per id: a false "perhaps" ~1% of the time
    BITS_PER_ID = 12
    HASHES = 4

    def __init__(self, capacity: int = 1 << 20) -> None:
        self._filters: list[tuple[int, bytearray]] = []
        self._capacity = capacity
        self._count = 0
        self._grow()

    def _grow(self) -> None:
        bits = 1 << (self._capacity * self.BITS_PER_ID - 1).bit_length()  # a power of two
        self._filters.append((bits - 1, bytearray(bits // 8)))

    def add(self, ident: str) -> bool:
        """Record ``ident``; whether it may have been recorded before."""
        h = hash(ident) & 0xFFFF_FFFF_FFFF_FFFF
        a, b = h & 0xFFFF_FFFF, (h >> 32) | 1
        steps = [a + n * b for n in range(self.HASHES)]
        seen = False
        for mask, table in self._filters:
            if all(table[(i & mask) >> 3] & (1 << (i & 7)) for i in steps):
                seen = True
                break
        if self._count >= self._capacity:  # full: a fresh filter twice the size
            self._capacity *= 2
            self._count = 0
            self._grow()
        mask, table = self._filters[-1]
        for i in steps:
            i &= mask
            table[i >> 3] |= 1 << (i & 7)
        self._count += 1
        return seen


def check(read: Callable[[], Iterable[RecordedEvent]]) -> ImportPlan:
    """Read a file through: positions ascending, each stream's versions 1, 2, ...,
    and no event id twice (``read`` is called again, only when an id may repeat)."""
    plan = ImportPlan()
    versions: dict[str, int] = {}  # a few dozen bytes a stream; no event is held
    ids = IdFilter()
    perhaps: set[str] = set()
    for event in read():
        if event.position <= plan.last:
            raise ValidationFailed(
                f"position {event.position} follows {plan.last}: events must be in log order"
            )
        if plan.events and event.position != plan.last + 1:
            plan.gaps += 1
        expected = versions.get(event.stream_id, 0) + 1
        if event.version != expected:
            raise ValidationFailed(
                f"position {event.position}: {event.stream_id} version {event.version}, "
                f"expected {expected} (a partial or reordered file)"
            )
        if ids.add(event.event_id):
            perhaps.add(event.event_id)
        versions[event.stream_id] = event.version
        plan.first = plan.first or event.position
        plan.last = event.position
        plan.events += 1
    plan.streams = len(versions)
    if perhaps:
        repeated(read(), perhaps)
    return plan


def repeated(events: Iterable[RecordedEvent], perhaps: set[str]) -> None:
    """Raise at the first event whose id an earlier event had, of those ``perhaps``."""
    seen: set[str] = set()
    for event in events:
        if event.event_id in perhaps:
            if event.event_id in seen:
                raise ValidationFailed(
                    f"position {event.position}: event id {event.event_id} repeats"
                )
            seen.add(event.event_id)


async def import_into(
    store: EventStore, events: Iterable[RecordedEvent], *, chunk: int = PAGE
) -> int:
    """Load checked events into an empty store, in chunks; returns how many."""
    if await store.head_position() != 0:
        raise ValidationFailed(
            "the target store is not empty: import only into a new database "
            "(positions and hashes are kept, so they cannot follow existing events)"
        )
    batch: list[RecordedEvent] = []
    count = 0
    for event in events:
        batch.append(event)
        if len(batch) >= chunk:
            await store.import_events(batch)
            count += len(batch)
            batch = []
    if batch:
        await store.import_events(batch)
        count += len(batch)
    await store.imported()
    return count
