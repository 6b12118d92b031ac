"""Deciding a group-commit batch: the append rules, written once for every backend.

A backend's single writer takes whatever append requests are queued, locks
the log (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's ``log_head`` row), reads
what the rules need -- the log's head, the heads of the batch's streams, the
stored events among its event ids -- and hands them to a
:class:`BatchPlanner`. The planner decides every caller's requests in memory,
in queue order; the backend writes what it decided in one go. Nothing here
does I/O or reads a clock (the time comes in as ``at``), so every rule is a
row in a table (``tests/test_batch_planner.py``), and both backends follow
the same rules (``tests/contract/``).

The rules, for each request of a caller's group, in order:

1. **Malformed**: a request that repeats an event id, or whose stream id,
   event ids, types or correlation ids hold a NUL or a lone surrogate or are
   longer than ``MAX_ID_BYTES``, is refused (``ValidationFailed``), whatever
   it expected and whatever the log holds. It can never succeed, so it must
   not look like a conflict worth retrying.
2. **Retry**: its event ids are looked up among the events planned earlier in
   its group, earlier in the batch, and stored. If any is found, all must be,
   on this stream: the request is an idempotent no-op answered with those
   records (in log order) and the stream's current version, whatever version
   it expected. Found only in part, or on another stream: ``ValidationFailed``.
3. **Expected version**: ``None`` checks nothing; otherwise it must equal the
   stream's version as the batch has left it so far (0: no stream yet), else
   ``ConcurrencyConflict``.
4. **Records**: its events take the log's next positions and the stream's
   next versions, each hashed onto the stream's chain.

A caller's group (one ``transact``) is all or nothing: when one of its
requests fails the group is refused alone and nothing of it is visible to the
groups after it; the rest of the batch commits. After its requests, a group's
new events are folded into read-model documents and due snapshots
(``projector.py``, ``snapshots.py``); a fold that fails refuses the group too.

What the planner may not know up front is asked for with :class:`Unknown`:
the backend reads it, tells the planner (:meth:`BatchPlanner.learn`) or its
own loader, and asks for the same decision again (a decision changes nothing
until it is accepted). SQLite plans ``optimistic``: it does not look a batch's
event ids up before deciding (a retried id is rare, and the database's
``UNIQUE (event_id)`` refuses it anyway, which sends the batch down the sure
path), so the planner asks only when an answer depends on them: a version
mismatch (the retry of an append that succeeded) or an id already known.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from sessionstream.core.errors import ConcurrencyConflict, SessionStreamError, ValidationFailed
from sessionstream.eventstore.groupcommit import Outcome
from sessionstream.eventstore.model import (
    GENESIS_HASH,
    AppendRequest,
    AppendResult,
    Doc,
    RecordedEvent,
    record_request,
)
from sessionstream.eventstore.projector import BatchProjector, DocLoader, Projection, no_docs_yet
from sessionstream.eventstore.snapshots import (
    Ident,
    LastSnapshot,
    Marks,
    Snapshot,
    SnapshotPolicy,
    no_snapshots_yet,
)


class StreamHead(NamedTuple):
    """A stream's version and the hash its next event chains onto."""

    version: int
    hash: str


#: the head of a stream that does not exist yet
NO_HEAD = StreamHead(0, GENESIS_HASH)


class Unknown(Exception):
    """A decision needs a fact the backend has not read yet.

    ``what`` is ``"events"`` (``ident``: event ids to look up), ``"doc"``
    (``(kind, key)``) or ``"snapshot"`` (``(stream id, kind)``). The planner
    raises the first; a backend's own document and snapshot loaders may raise
    the others. Not a ``SessionStreamError``: it never reaches a caller.
    """

    def __init__(self, what: str, ident: Any) -> None:
        super().__init__(what, ident)
        self.what = what
        self.ident = ident


class Decision(NamedTuple):
    """One caller's group, decided: what it adds to the batch, or why it is refused.

    Immutable, and a named tuple rather than a frozen dataclass: one is built
    per caller on the hot path, and a tuple builds several times faster.
    """

    outcome: Outcome
    #: the group's new events, in position order
    records: tuple[RecordedEvent, ...] = ()
    streams: Mapping[str, StreamHead] = MappingProxyType({})
    docs: Mapping[Ident, Doc] = MappingProxyType({})
    snapshots: tuple[Snapshot, ...] = ()
    #: the log's head after the group
    head: int = 0

    @property
    def refused(self) -> bool:
        return isinstance(self.outcome, SessionStreamError)


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Everything a batch writes, and each caller's answer (in queue order)."""

    outcomes: list[Outcome]
    records: list[RecordedEvent]
    streams: dict[str, StreamHead]
    docs: list[Doc]
    snapshots: list[Snapshot]
    head: int


#: the longest stream id, event id, type or correlation id, in UTF-8 bytes: an index
#: entry on PostgreSQL holds at most 2,704 bytes, and a longer id failed the whole batch
MAX_ID_BYTES = 1024


def check_text(*values: str | None) -> None:
    """Text every backend can store and index: no NUL (PostgreSQL refuses it), valid
    UTF-8, at most :data:`MAX_ID_BYTES`."""
    for value in values:
        if value is None:
            continue
        if "\x00" in value:
            raise ValidationFailed(
                "stream ids, event ids, types and correlation ids cannot hold NUL"
            )
        try:
            size = len(value.encode())
        except UnicodeEncodeError as exc:
            raise ValidationFailed(f"not valid UTF-8 text: {exc}") from None
        if size > MAX_ID_BYTES:
            raise ValidationFailed(
                f"stream ids, event ids, types and correlation ids hold at most "
                f"{MAX_ID_BYTES} bytes of UTF-8, not {size}"
            )


def storable(text: str) -> bool:
    """Whether a backend may send this text to its database at all (as a key to look up)."""
    if text.isascii() and "\x00" not in text and len(text) <= MAX_ID_BYTES:
        return True
    try:
        check_text(text)
    except ValidationFailed:
        return False
    return True


def check_request(request: AppendRequest, ids: Sequence[str]) -> None:
    """Rule 1: refuse a request that can never be appended.

    Runs for every request: the common ASCII text without a NUL is recognised
    without encoding it, and only the rest goes through :func:`check_text`.
    """
    if len(ids) > 1 and len(set(ids)) != len(ids):
        raise ValidationFailed(
            f"append to {request.stream_id} repeats an event id: each event needs its own"
        )
    most = MAX_ID_BYTES  # an ASCII string's length is its size in UTF-8
    stream_id = request.stream_id
    if "\x00" in stream_id or not stream_id.isascii() or len(stream_id) > most:
        check_text(stream_id)
    for new in request.events:
        event_id, type_, correlation_id = new.event_id, new.type, new.correlation_id
        if (
            "\x00" in event_id
            or "\x00" in type_
            or not (event_id.isascii() and type_.isascii())
            or len(event_id) > most
            or len(type_) > most
        ):
            check_text(event_id, type_)
        if correlation_id is not None and (
            "\x00" in correlation_id or not correlation_id.isascii() or len(correlation_id) > most
        ):
            check_text(correlation_id)


class BatchPlanner:
    """Decides a batch's groups one after another against the state read under the lock.

    ``streams`` must hold the head of every existing stream the batch names;
    ``stored`` the stored events among the batch's event ids (all of them,
    unless ``optimistic``). ``load_doc`` and ``last_snapshot`` read documents
    and snapshot marks as the transaction sees them (they may raise
    :class:`Unknown`).
    """

    def __init__(
        self,
        head: int,
        streams: Mapping[str, StreamHead],
        stored: Mapping[str, RecordedEvent] | None = None,
        *,
        at: str,
        optimistic: bool = False,
        projections: Sequence[Projection] = (),
        load_doc: DocLoader = no_docs_yet,
        snapshot_every: int = 0,
        last_snapshot: LastSnapshot = no_snapshots_yet,
    ) -> None:
        self.at = at
        self.optimistic = optimistic
        self.projector = BatchProjector(projections, load_doc)
        self._policy = SnapshotPolicy(projections, snapshot_every)
        self._marks = Marks(last_snapshot)
        self._head = head
        self._base = streams
        #: events by id: stored ones read or learned, and those accepted groups planned
        self._known: dict[str, RecordedEvent] = dict(stored or {})
        #: ids looked up (optimistic): absent from ``_known`` means not stored
        self._asked: set[str] = set()
        #: what accepted groups added
        self._streams: dict[str, StreamHead] = {}
        self._records: list[RecordedEvent] = []
        self._snapshots: dict[tuple[str, str, int], Snapshot] = {}
        self._outcomes: list[Outcome] = []

    # the protocol a backend drives ------------------------------------------------
    def decide(self, requests: Sequence[AppendRequest]) -> Decision:
        """Decide one caller's group (the rules above); changes nothing until :meth:`accept`.

        Raises :class:`Unknown` when it needs a fact first; every refusal is
        in the decision's ``outcome``. This is the hot loop of every append
        (tens of thousands of events a second on one core): keep it free of
        calls and allocations it can avoid.
        """
        try:
            head = self._head
            base, batch_heads, known = self._base, self._streams, self._known
            planned: dict[str, RecordedEvent] = {}
            streams: dict[str, StreamHead] = {}
            results: list[AppendResult] = []
            fresh: list[RecordedEvent] = []
            for request in requests:
                stream_id = request.stream_id
                ids = [e.event_id for e in request.events]
                check_request(request, ids)
                current = (
                    streams.get(stream_id)
                    or batch_heads.get(stream_id)
                    or base.get(stream_id)
                    or NO_HEAD
                )
                expected = request.expected_version
                mismatch = expected is not None and expected != current.version
                found: dict[str, RecordedEvent] | None = None
                for event_id in ids:
                    hit = planned.get(event_id) or known.get(event_id)
                    if hit is not None:
                        if found is None:
                            found = {}
                        found[event_id] = hit
                if (found or mismatch) and self.optimistic:
                    missing = [i for i in ids if i not in (found or ()) and i not in self._asked]
                    if missing:
                        raise Unknown("events", tuple(missing))
                if found:
                    results.append(_retry(request, ids, found, current.version))
                    continue
                if mismatch:
                    assert expected is not None
                    raise ConcurrencyConflict(stream_id, expected, current.version)
                records = record_request(
                    request, head=head, version=current.version, prev_hash=current.hash, at=self.at
                )
                last = records[-1]
                head = last.position
                streams[stream_id] = StreamHead(last.version, last.hash)
                for record in records:
                    planned[record.event_id] = record
                results.append(AppendResult(stream_id, tuple(records), last.version))
                fresh.extend(records)
            if not fresh:
                return Decision(results)
            docs = self.projector.project(fresh)
            snapshots = self._policy.due(fresh, docs, self._marks) if docs else ()
            if docs:  # each caller gets the documents it folded: no read after the write
                folded = tuple(docs.values())
                results = [
                    r
                    if r.duplicate
                    else AppendResult(r.stream_id, r.events, r.version, False, folded)
                    for r in results
                ]
            return Decision(results, tuple(fresh), streams, docs, tuple(snapshots), head)
        except SessionStreamError as exc:
            return Decision(exc)
        except (TypeError, ValueError) as exc:  # data with no JSON or UTF-8 form
            return Decision(ValidationFailed(f"append rejected: {exc}"))

    def learn(self, asked: Iterable[str], found: Iterable[RecordedEvent]) -> None:
        """The answer to ``Unknown("events", ids)``: which of the asked ids are stored."""
        self._asked.update(asked)
        self._known.update((e.event_id, e) for e in found)

    def accept(self, decision: Decision) -> None:
        """Record a caller's answer; a committed group becomes visible to the groups after it."""
        self._outcomes.append(decision.outcome)
        records = decision.records
        if not records:  # refused, or only retries
            return
        known = self._known
        for record in records:
            known[record.event_id] = record
        self._streams.update(decision.streams)
        self._records.extend(records)
        if decision.docs:
            self.projector.keep(decision.docs)
        if decision.snapshots:
            self._marks.taken(decision.snapshots)
            for snapshot in decision.snapshots:
                self._snapshots[(snapshot.stream_id, snapshot.kind, snapshot.version)] = snapshot
        self._head = decision.head

    def plan(self) -> BatchPlan:
        """What the accepted groups write, and every answer so far."""
        return BatchPlan(
            self._outcomes,
            self._records,
            self._streams,
            self.projector.documents,
            list(self._snapshots.values()),
            self._head,
        )


def _retry(
    request: AppendRequest, ids: Sequence[str], found: Mapping[str, RecordedEvent], version: int
) -> AppendResult:
    """Rule 2: every id recorded on this stream makes a no-op; anything else a refusal."""
    if len(found) != len(ids):
        raise ValidationFailed(
            "some of these event ids are already stored, others are not: "
            "an idempotent retry must repeat the same events"
        )
    if any(r.stream_id != request.stream_id for r in found.values()):
        raise ValidationFailed(
            f"these event ids are stored on another stream than {request.stream_id}: "
            "an idempotent retry must repeat the same append"
        )
    records = sorted(found.values(), key=lambda r: r.position)
    return AppendResult(request.stream_id, tuple(records), version, duplicate=True)


def check_import(
    events: Sequence[RecordedEvent],
    head: int,
    streams: Mapping[str, StreamHead],
    stored: Container[str] = frozenset(),
) -> dict[str, StreamHead]:
    """The stream heads an import of recorded events leaves, or ``ValidationFailed``.

    Imported events are taken verbatim (``EventStore.import_events``): each
    must lie above the log's head, in position order, continue its stream's
    versions, carry an id the log does not hold (``stored``: the ids known to
    be, the database's ``UNIQUE`` being the backstop) and text every backend
    can store.
    """
    seen: set[str] = set()
    after: dict[str, StreamHead] = {}
    for event in events:
        if event.position <= head:
            raise ValidationFailed(
                f"event at position {event.position} is not above the log's head "
                f"({head}): import needs events in position order into an empty store"
            )
        head = event.position
        version = (after.get(event.stream_id) or streams.get(event.stream_id) or NO_HEAD).version
        if event.version != version + 1:
            raise ValidationFailed(
                f"{event.stream_id} version {event.version} at position "
                f"{event.position} does not follow version {version}"
            )
        if event.event_id in seen or event.event_id in stored:
            raise ValidationFailed(f"event id {event.event_id} is already stored")
        seen.add(event.event_id)
        check_text(event.stream_id, event.event_id, event.type, event.correlation_id)
        after[event.stream_id] = StreamHead(event.version, event.hash)
    return after
