"""Deciding an append batch, and folding the log, for the PostgreSQL backend.

The functional core of ``eventstore/postgres.py``: given the rows a batch
needs, read under the ``log_head`` lock, :class:`Planner` decides every
request's outcome in memory with the SQLite backend's rules (idempotent event
ids first, then the expected version, then records, hashes and folded
documents; a request that raises changes nothing) and returns the rows to
write. No I/O happens here except in :func:`refold`, which streams the log
through the same projections for ``rebuild``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sessionstream.core.errors import ConcurrencyConflict, SessionStreamError, ValidationFailed
from sessionstream.core.vocabulary import session_stream
from sessionstream.eventstore.model import (
    GENESIS_HASH,
    AppendRequest,
    AppendResult,
    Doc,
    RecordedEvent,
    record_request,
    row_to_event,
)
from sessionstream.eventstore.pg_schema import EVENT_COLUMNS, WRITE_DOCS
from sessionstream.eventstore.projector import BatchProjector, Projection

Outcome = list[AppendResult] | SessionStreamError
Ident = tuple[str, str]
SnapshotRow = tuple[str, str, int, int, str]


def dumps(value: Any) -> str:
    # ASCII escapes: a lone surrogate in user text cannot break the encoding
    return json.dumps(value, separators=(",", ":"))


def doc_arrays(docs: Sequence[Doc]) -> list[list[Any]]:
    """Column arrays for an ``unnest`` upsert of documents."""
    return [
        [d.kind for d in docs],
        [d.key for d in docs],
        [d.index.owner for d in docs],
        [d.index.parent for d in docs],
        [d.index.created_at for d in docs],
        [d.index.active for d in docs],
        [d.index.deleted for d in docs],
        [d.version for d in docs],
        [d.position for d in docs],
        [dumps(d.body) for d in docs],
    ]


def snapshot_arrays(rows: Sequence[SnapshotRow]) -> list[list[Any]]:
    return [[r[i] for r in rows] for i in range(5)]


def check_text(*values: str | None) -> None:
    for value in values:
        if value is None:
            continue
        if "\x00" in value:
            raise ValidationFailed("stream ids, event ids and types cannot contain NUL")
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise ValidationFailed(f"not valid UTF-8 text: {exc}") from None


class Miss(Exception):
    """The plan needs a row the prefetch did not read."""

    def __init__(self, what: str, ident: Any) -> None:
        super().__init__(what, ident)
        self.what = what
        self.ident = ident


@dataclass(slots=True)
class BatchState:
    """What the database holds for one batch, read under the head lock."""

    head: int
    events: dict[str, RecordedEvent] = field(default_factory=dict)
    streams: dict[str, tuple[int, str]] = field(default_factory=dict)
    docs: dict[Ident, Doc] = field(default_factory=dict)
    snapshots: dict[str, int] = field(default_factory=dict)
    asked_docs: set[Ident] = field(default_factory=set)
    asked_snapshots: set[str] = field(default_factory=set)


@dataclass(slots=True)
class BatchPlan:
    outcomes: list[Outcome]
    records: list[RecordedEvent]
    streams: dict[str, tuple[int, str]]
    docs: list[Doc]
    snapshots: dict[tuple[str, str, int], SnapshotRow]
    head: int


class Planner:
    """Decides a batch in memory against the state read under the lock.

    The same rules as the SQLite backend's per-request savepoint: idempotent
    event ids first, then the expected version, then records with hashes and
    the folded documents; a request that raises changes nothing.
    """

    def __init__(
        self, state: BatchState, projections: Sequence[Projection], snapshot_every: int
    ) -> None:
        self.state = state
        self.snapshot_every = snapshot_every
        self.projector = BatchProjector(projections, self._load)
        self.head = state.head
        self.events: dict[str, RecordedEvent] = {}
        self.streams: dict[str, tuple[int, str]] = {}
        self.snapshots: dict[str, int] = {}
        self.snapshot_rows: dict[tuple[str, str, int], SnapshotRow] = {}
        self.records: list[RecordedEvent] = []

    def _load(self, kind: str, key: str) -> Doc | None:
        if (kind, key) not in self.state.asked_docs:
            raise Miss("doc", (kind, key))
        return self.state.docs.get((kind, key))

    def plan(self, batch: Sequence[Sequence[AppendRequest]], now: str) -> BatchPlan:
        """Outcomes in batch order; each group of requests is all or nothing."""
        outcomes: list[Outcome] = []
        for requests in batch:
            try:
                outcomes.append(self._request_group(requests, now))
            except SessionStreamError as exc:
                outcomes.append(exc)
            except (TypeError, ValueError) as exc:  # data that has no JSON or UTF-8 form
                outcomes.append(ValidationFailed(f"append rejected: {exc}"))
        return BatchPlan(
            outcomes,
            self.records,
            self.streams,
            self.projector.documents,
            self.snapshot_rows,
            self.head,
        )

    def _request_group(self, requests: Sequence[AppendRequest], now: str) -> list[AppendResult]:
        events: dict[str, RecordedEvent] = {}
        streams: dict[str, tuple[int, str]] = {}
        head = self.head
        results: list[AppendResult] = []
        fresh: list[RecordedEvent] = []

        def stream_head(stream_id: str) -> tuple[int, str]:
            found = streams.get(stream_id) or self.streams.get(stream_id)
            return found or self.state.streams.get(stream_id) or (0, GENESIS_HASH)

        for request in requests:
            ids = [e.event_id for e in request.events]
            stored = {}
            for event_id in ids:
                hit = events.get(event_id) or self.events.get(event_id)
                hit = hit or self.state.events.get(event_id)
                if hit is not None:
                    stored[event_id] = hit
            if stored:
                if len(stored) != len(ids) or any(
                    r.stream_id != request.stream_id for r in stored.values()
                ):
                    raise ValidationFailed(
                        "some of these event ids are already stored, others are not: "
                        "an idempotent retry must repeat the same events"
                    )
                rows = sorted(stored.values(), key=lambda r: r.position)
                version = stream_head(request.stream_id)[0]
                results.append(
                    AppendResult(request.stream_id, tuple(rows), version, duplicate=True)
                )
                continue
            if len(set(ids)) != len(ids):
                raise ValidationFailed("append rejected by the store: an event id is repeated")
            version, prev_hash = stream_head(request.stream_id)
            if request.expected_version is not None and request.expected_version != version:
                raise ConcurrencyConflict(request.stream_id, request.expected_version, version)
            for new in request.events:
                check_text(request.stream_id, new.event_id, new.type, new.correlation_id)
            records = record_request(
                request, head=head, version=version, prev_hash=prev_hash, at=now
            )
            last = records[-1]
            head, version, prev_hash = last.position, last.version, last.hash
            for record in records:
                events[record.event_id] = record
            streams[request.stream_id] = (version, prev_hash)
            results.append(AppendResult(request.stream_id, tuple(records), version))
            fresh.extend(records)
        docs = self.projector.project(fresh)
        snapshots = self._snapshots(docs.values())
        # the request group succeeded: make it visible to the rest of the batch
        self.projector.keep(docs)
        self.events.update(events)
        self.streams.update(streams)
        for row in snapshots:
            self.snapshots[row[0]] = row[2]
            self.snapshot_rows[(row[0], row[1], row[2])] = row
        self.records.extend(fresh)
        self.head = head
        return results

    def _snapshots(self, docs: Any) -> list[SnapshotRow]:
        if self.snapshot_every <= 0:
            return []
        rows = []
        for doc in docs:
            if doc.kind != "session":
                continue
            stream_id = session_stream(doc.key)
            last = self.snapshots.get(stream_id)
            if last is None:
                if stream_id not in self.state.asked_snapshots:
                    raise Miss("snapshot", stream_id)
                last = self.state.snapshots.get(stream_id, 0)
            if doc.version - last >= self.snapshot_every:
                rows.append((stream_id, doc.kind, doc.version, doc.position, dumps(doc.body)))
        return rows


class ImportPlanner(Planner):
    """Takes already-recorded events verbatim (``import_events``): checks, never recomputes."""

    def plan_import(self, events: Sequence[RecordedEvent]) -> BatchPlan:
        head = self.state.head
        seen: set[str] = set()
        for event in events:
            if event.position <= head:
                raise ValidationFailed(
                    f"event at position {event.position} is not above the log's head "
                    f"({head}): import needs events in position order into an empty store"
                )
            head = event.position
            known = self.streams.get(event.stream_id) or self.state.streams.get(event.stream_id)
            version = known[0] if known else 0
            if event.version != version + 1:
                raise ValidationFailed(
                    f"{event.stream_id} version {event.version} at position "
                    f"{event.position} does not follow version {version}"
                )
            if event.event_id in seen or event.event_id in self.state.events:
                raise ValidationFailed(f"event id {event.event_id} is already stored")
            seen.add(event.event_id)
            check_text(event.stream_id, event.event_id, event.type, event.correlation_id)
            self.streams[event.stream_id] = (event.version, event.hash)
        for event in events:
            docs = self.projector.project([event])
            self.projector.keep(docs)
            for row in self._snapshots(docs.values()):
                self.snapshots[row[0]] = row[2]
                self.snapshot_rows[(row[0], row[1], row[2])] = row
        self.records.extend(events)
        self.head = head
        return BatchPlan(
            [], self.records, self.streams, self.projector.documents, self.snapshot_rows, head
        )


def rebuild_snapshots(
    docs: Any, last_snapshot: dict[str, int], snapshot_every: int
) -> list[SnapshotRow]:
    """Snapshot rows a rebuild takes where the live path would have taken them."""
    rows: list[SnapshotRow] = []
    if snapshot_every <= 0:
        return rows
    for doc in docs:
        if doc.kind != "session":
            continue
        stream_id = session_stream(doc.key)
        if doc.version - last_snapshot.get(stream_id, 0) >= snapshot_every:
            last_snapshot[stream_id] = doc.version
            rows.append((stream_id, doc.kind, doc.version, doc.position, dumps(doc.body)))
    return rows


async def refold(conn: Any, projections: Sequence[Projection], snapshot_every: int) -> int:
    """Fold the whole log into empty read-model tables; returns the events folded.

    ``conn`` is an asyncpg connection inside the caller's transaction.
    """
    projector = BatchProjector(projections, lambda kind, key: None)
    last_snapshot: dict[str, int] = {}
    count = after = 0
    while True:
        rows = await conn.fetch(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT 5000",
            after,
        )
        if not rows:
            return count
        changed: dict[Ident, Doc] = {}
        snapshots: list[SnapshotRow] = []
        for row in rows:
            docs = projector.project([row_to_event(row)])
            projector.keep(docs)
            changed.update(docs)
            snapshots.extend(rebuild_snapshots(docs.values(), last_snapshot, snapshot_every))
        await conn.execute(
            WRITE_DOCS, *doc_arrays(list(changed.values())), *snapshot_arrays(snapshots)
        )
        count += len(rows)
        after = rows[-1][0]
