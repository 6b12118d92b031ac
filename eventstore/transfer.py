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
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from sessionstream.core.errors import ValidationFailed
from sessionstream.core.vocabulary import campaign_stream, session_stream
from sessionstream.eventstore.audit import HEADER, PROOF, header_line, proof_field
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import RecordedEvent
from sessionstream.eventstore.tree import StoredCheckpoint

PAGE = 5000
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
    """The scope's events in position order, a page at a time, up to ``head`` (today's)."""
    if head is None:
        head = await store.head_position()
    keys = scope.keys
    wide = keys is not None and len(keys) > MAX_KEYS
    after = 0
    while after < head:
        page = await store.read_all(
            after, limit=PAGE, keys=None if wide else keys, to_position=head
        )
        if not page:
            return
        for event in page:
            if not wide or keys is None or any(k in keys for k in event.keys):
                yield event
        after = page[-1].position


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


def check(events: Iterable[RecordedEvent]) -> ImportPlan:
    """One pass over a file: positions ascending, each stream's versions 1, 2, ..."""
    plan = ImportPlan()
    versions: dict[str, int] = {}
    ids: set[str] = set()
    for event in events:
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
        if event.event_id in ids:
            raise ValidationFailed(f"position {event.position}: event id {event.event_id} repeats")
        ids.add(event.event_id)
        versions[event.stream_id] = event.version
        plan.first = plan.first or event.position
        plan.last = event.position
        plan.events += 1
    plan.streams = len(versions)
    return plan


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
    return count
