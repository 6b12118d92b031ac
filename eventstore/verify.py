"""Integrity checks an auditor can run on any store: the log and the read models.

Two questions, answered through the backend contract only (``read_all``,
``list_docs``), so SQLite and PostgreSQL are checked by the same code:

1. Is the log intact? Every stream's versions run 1..n, every event's hash is
   sha256 over its predecessor's stored hash and its own canonical bytes, and
   global positions have no gaps.
2. Do the read models say what the log says? Every document equals a fresh
   fold of the events through the store's own projections (the fold a
   rebuild would write), and no document exists that the log does not imply.
   A document carries the version and position of the last event folded into
   it, so this also catches a stream whose newest events were removed.

Each link of a hash chain is checked against the *stored* previous hash, so
one altered event is reported once, by position, stream and version, instead
of smearing over the rest of its stream. The core (:class:`ChainCheck`,
:func:`compare_docs`) is pure; :func:`verify_store` is the thin async shell.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import (
    GENESIS_HASH,
    Doc,
    RecordedEvent,
    canonical_json,
    recompute_hash,
)
from sessionstream.eventstore.projector import Projection, Refold

#: problems kept in a report; counting goes on past it
MAX_PROBLEMS = 100
PAGE = 5000


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that is wrong, named precisely enough to find it."""

    #: hash | version | gap | row | missing_row | extra_row | unsettled
    kind: str
    message: str
    position: int | None = None
    stream_id: str | None = None
    version: int | None = None
    doc_kind: str | None = None
    doc_key: str | None = None

    @property
    def is_event(self) -> bool:
        return self.position is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    streams: int
    events: int
    docs: int
    head: int
    #: sha256 over every stream's (id, version, head hash), sorted: record it
    #: somewhere else and a later report with the same digest proves the log
    #: up to ``head`` is unchanged
    digest: str
    problems: tuple[Problem, ...]
    #: problems found, including those past ``MAX_PROBLEMS``
    problem_count: int
    gaps_allowed: bool = False

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "streams": self.streams,
            "events": self.events,
            "docs": self.docs,
            "head": self.head,
            "digest": self.digest,
            "problem_count": self.problem_count,
            "problems": [p.to_json() for p in self.problems],
        }


@dataclass(slots=True)
class ChainCheck:
    """Feed events in position order; collects what breaks a chain.

    Pure: no I/O. ``allow_gaps`` accepts positions that skip numbers (a store
    loaded from a per-campaign or per-session export has them by design).
    """

    allow_gaps: bool = False
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)
    last_position: int = 0
    events: int = 0
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0

    def add_problem(self, problem: Problem) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def feed(self, event: RecordedEvent) -> None:
        self.events += 1
        where = f"position {event.position} ({event.stream_id} v{event.version})"
        expected = self.last_position + 1
        if event.position != expected and not (
            self.allow_gaps and event.position > self.last_position
        ):
            self.add_problem(
                Problem(
                    "gap",
                    f"{where}: expected position {expected} after {self.last_position}",
                    event.position,
                    event.stream_id,
                    event.version,
                )
            )
        self.last_position = max(self.last_position, event.position)
        version, prev_hash = self.heads.get(event.stream_id, (0, GENESIS_HASH))
        if event.version != version + 1:
            self.add_problem(
                Problem(
                    "version",
                    f"{where}: stream version {event.version} does not follow {version}",
                    event.position,
                    event.stream_id,
                    event.version,
                )
            )
        if recompute_hash(prev_hash, event) != event.hash:
            self.add_problem(
                Problem(
                    "hash",
                    f"{where}: {event.type} does not match its hash: "
                    "its content or its predecessor's hash was altered",
                    event.position,
                    event.stream_id,
                    event.version,
                )
            )
        self.heads[event.stream_id] = (event.version, event.hash)

    def digest(self) -> str:
        body = canonical_json(sorted([s, v, h] for s, (v, h) in self.heads.items()))
        return hashlib.sha256(body.encode()).hexdigest()


def doc_form(doc: Doc) -> str:
    """One spelling of everything a stored document holds, for equality."""
    ix = doc.index
    return canonical_json(
        [
            doc.version,
            doc.position,
            doc.body,
            [ix.owner, ix.parent, ix.created_at, ix.active, ix.deleted],
        ]
    )


def differing_fields(stored: Doc, fresh: Doc) -> list[str]:
    """Which parts of a document differ, for a message a person can act on."""
    names = []
    if stored.version != fresh.version:
        names.append(f"version {stored.version} != {fresh.version}")
    if stored.position != fresh.position:
        names.append(f"position {stored.position} != {fresh.position}")
    if stored.index != fresh.index:
        names.append("index columns")
    a, b = stored.body, fresh.body
    if isinstance(a, dict) and isinstance(b, dict):
        # a session body nests its row: name the row's fields, then the rest; each key once
        nested = isinstance(a.get("row"), dict) and isinstance(b.get("row"), dict)
        parts = (
            [(a["row"], b["row"]), ({**a, "row": None}, {**b, "row": None})] if nested else [(a, b)]
        )
        for x, y in parts:
            for key in sorted(set(x) | set(y)):
                if canonical_json(x.get(key)) != canonical_json(y.get(key)):
                    names.append(key)
    elif canonical_json(a) != canonical_json(b):
        names.append("body")
    return names


def compare_docs(kind: str, stored: Iterable[Doc], fresh: dict[str, Doc]) -> list[Problem]:
    """Stored documents of one kind against a fresh fold, in key order."""
    problems: list[Problem] = []
    by_key = {d.key: d for d in stored}
    for key in sorted(set(by_key) | set(fresh)):
        have, want = by_key.get(key), fresh.get(key)
        if have is None:
            problems.append(
                Problem(
                    "missing_row",
                    f"{kind} {key}: the log implies it, the store lacks it",
                    doc_kind=kind,
                    doc_key=key,
                )
            )
        elif want is None:
            problems.append(
                Problem(
                    "extra_row",
                    f"{kind} {key}: stored, but no event in the log makes it",
                    doc_kind=kind,
                    doc_key=key,
                )
            )
        elif doc_form(have) != doc_form(want):
            diff = ", ".join(differing_fields(have, want)) or "encoding"
            problems.append(
                Problem(
                    "row",
                    f"{kind} {key}: differs from a fresh fold of its events ({diff})",
                    doc_kind=kind,
                    doc_key=key,
                )
            )
    return problems


Progress = Callable[[str, int], None]


async def _pages(
    store: EventStore, after: int, to_position: int
) -> AsyncIterator[list[RecordedEvent]]:
    while after < to_position:
        events = await store.read_all(after, limit=PAGE, to_position=to_position)
        if not events:
            return
        yield events
        after = events[-1].position


async def verify_store(
    store: EventStore,
    *,
    projections: Sequence[Projection] | None = None,
    allow_gaps: bool = False,
    progress: Progress | None = None,
    catch_up_rounds: int = 5,
) -> VerifyReport:
    """Check the hash chains, positions and every read model of an open store.

    Runs against a live store: the log is read up to the head seen at the
    start, and a document that moved past that point (a write during the
    check) makes the check read on to the new head and compare again, a few
    rounds at most.
    """
    projections = tuple(store.projections if projections is None else projections)
    chain = ChainCheck(allow_gaps=allow_gaps)
    refold = Refold(projections, snapshot_every=0)  # as a rebuild folds; snapshots unchecked
    folded: dict[tuple[str, str], Doc] = {}

    async def read_to(target: int) -> None:
        async for page in _pages(store, chain.last_position, target):
            for event in page:
                chain.feed(event)
            docs, _ = refold.page(page)
            folded.update(((d.kind, d.key), d) for d in docs)
            if progress is not None:
                progress("events", chain.events)

    doc_problems: list[Problem] = []
    checked_docs = 0
    for _ in range(max(1, catch_up_rounds)):
        head = await store.head_position()
        await read_to(head)
        stored: dict[str, list[Doc]] = {}
        newer = False
        for projection in projections:
            docs = await store.list_docs(projection.kind, include_deleted=True)
            stored[projection.kind] = docs
            newer = newer or any(d.position > chain.last_position for d in docs)
        if newer:
            continue  # written during the check: read on and compare again
        doc_problems = []
        checked_docs = 0
        for projection in projections:
            fresh = {key: doc for (kind, key), doc in folded.items() if kind == projection.kind}
            checked_docs += len(stored[projection.kind])
            doc_problems.extend(compare_docs(projection.kind, stored[projection.kind], fresh))
        break
    else:
        doc_problems = [
            Problem("unsettled", "the read models kept changing during the check; run it again")
        ]

    event_problems = sorted(chain.problems, key=lambda p: (p.position or 0, p.kind))
    problems = (event_problems + doc_problems)[:MAX_PROBLEMS]
    return VerifyReport(
        streams=len(chain.heads),
        events=chain.events,
        docs=checked_docs,
        head=chain.last_position,
        digest=chain.digest(),
        problems=tuple(problems),
        problem_count=chain.problem_count + len(doc_problems),
        gaps_allowed=allow_gaps,
    )
