"""The rules ``verify`` applies, pure: what a problem is, how chains and documents are checked.

No I/O here; ``eventstore/verify.py`` reads the store and feeds these. Two
chain checks say the same thing about an intact log in two reading orders:

- :class:`StreamChains` takes events in (stream id, version) order, the
  order ``verify`` reads the log in, so it holds one stream's head at a time
  and hashes the digest as it goes;
- :class:`ChainCheck` takes them in position order, holding every stream's
  head. It is the reference, and finds the gaps when positions are not
  gapless (rare: a store imported from a scoped export, or an edited one).

Each link of a hash chain is checked against the *stored* previous hash, so
one altered event is reported once, by position, stream and version, instead
of smearing over the rest of its stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sessionstream.eventstore.model import (
    GENESIS_HASH,
    Doc,
    RecordedEvent,
    canonical_json,
    recompute_hash,
)

#: problems kept in a report; counting goes on past it
MAX_PROBLEMS = 100


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


class Kept:
    """Problems found in any order, reported first-by-``rank``: the ``MAX_PROBLEMS``
    lowest are kept, every one is counted (a store broken everywhere costs no more
    memory than one broken once)."""

    def __init__(self) -> None:
        self.count = 0
        self._ranked: list[tuple[tuple[Any, ...], int, Problem]] = []

    def add(self, rank: tuple[Any, ...], problem: Problem) -> None:
        self.count += 1
        self._ranked.append((rank, self.count, problem))
        if len(self._ranked) >= 2 * MAX_PROBLEMS:
            self._ranked = sorted(self._ranked)[:MAX_PROBLEMS]

    def first(self) -> list[Problem]:
        return [p for _, _, p in sorted(self._ranked)[:MAX_PROBLEMS]]


def event_rank(problem: Problem) -> tuple[int, str]:
    return (problem.position or 0, problem.kind)


def _where(event: RecordedEvent) -> str:
    return f"position {event.position} ({event.stream_id} v{event.version})"


def _event_problem(kind: str, message: str, event: RecordedEvent) -> Problem:
    return Problem(kind, message, event.position, event.stream_id, event.version)


def gap_problem(last: int, event: RecordedEvent, allow_gaps: bool) -> Problem | None:
    """The gap before ``event`` when read in position order after position ``last``."""
    expected = last + 1
    if event.position == expected or (allow_gaps and event.position > last):
        return None
    return _event_problem(
        "gap", f"{_where(event)}: expected position {expected} after {last}", event
    )


def hash_problem(prev_hash: str, event: RecordedEvent) -> Problem | None:
    if recompute_hash(prev_hash, event) == event.hash:
        return None
    return _event_problem(
        "hash",
        f"{_where(event)}: {event.type} does not match its hash: "
        "its content or its predecessor's hash was altered",
        event,
    )


def version_problem(version: int, event: RecordedEvent) -> Problem | None:
    if event.version == version + 1:
        return None
    return _event_problem(
        "version",
        f"{_where(event)}: stream version {event.version} does not follow {version}",
        event,
    )


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

    def add_problem(self, problem: Problem | None) -> None:
        if problem is None:
            return
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def feed(self, event: RecordedEvent) -> None:
        self.events += 1
        self.add_problem(gap_problem(self.last_position, event, self.allow_gaps))
        self.last_position = max(self.last_position, event.position)
        version, prev_hash = self.heads.get(event.stream_id, (0, GENESIS_HASH))
        self.add_problem(version_problem(version, event))
        self.add_problem(hash_problem(prev_hash, event))
        self.heads[event.stream_id] = (event.version, event.hash)

    def digest(self) -> str:
        body = canonical_json(sorted([s, v, h] for s, (v, h) in self.heads.items()))
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass(slots=True)
class StreamChains:
    """Feed events in (stream id, version) order; collects what breaks a chain.

    Pure, and holds one stream's head whatever the log's size. For an intact log
    it agrees with :class:`ChainCheck` (the digest is the same bytes, hashed as
    the streams go by in the order ``ChainCheck`` sorts them). Versions must run
    1, 2, ... and, since the versions are read in order here, their positions must
    rise with them: a position-ordered reader sees both as one rule. Gaps are not
    this check's business: a log whose ``events`` equal its head position has none.
    """

    problems: Kept = field(default_factory=Kept)
    events: int = 0
    streams: int = 0
    last_position: int = 0
    stream: str | None = None
    version: int = 0
    hash: str = GENESIS_HASH
    position: int = 0
    _digest: Any = field(default_factory=hashlib.sha256)

    def add(self, problem: Problem | None) -> None:
        if problem is not None:
            self.problems.add(event_rank(problem), problem)

    def feed(self, event: RecordedEvent) -> None:
        if event.stream_id != self.stream:
            self._close()
            self.stream, self.version, self.hash, self.position = (
                event.stream_id,
                0,
                GENESIS_HASH,
                0,
            )
            self.streams += 1
        self.events += 1
        self.last_position = max(self.last_position, event.position)
        self.add(version_problem(self.version, event))
        if event.version == self.version + 1 and event.position <= self.position:
            self.add(
                _event_problem(
                    "version",
                    f"{_where(event)}: comes before version {self.version} "
                    f"at position {self.position}",
                    event,
                )
            )
        self.add(hash_problem(self.hash, event))
        self.version, self.hash, self.position = event.version, event.hash, event.position

    def _close(self) -> None:
        if self.stream is not None:
            sep = "[" if self.streams == 1 else ","
            self._digest.update(
                (sep + canonical_json([self.stream, self.version, self.hash])).encode()
            )

    def digest(self) -> str:
        """The digest over every stream fed so far (call once all are)."""
        self._close()
        self.stream = None
        final = self._digest.copy()
        final.update(b"]" if self.streams else b"[]")
        return str(final.hexdigest())


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


def compare_one(kind: str, key: str, have: Doc | None, want: Doc | None) -> Problem | None:
    """A stored document (``have``) against a fresh fold of its events (``want``)."""
    if have is None and (want is None or not want.index.kept):
        return None  # nothing implied, or a document the store folds when read
    if have is None:
        message = f"{kind} {key}: the log implies it, the store lacks it"
        return Problem("missing_row", message, doc_kind=kind, doc_key=key)
    if want is None:
        message = f"{kind} {key}: stored, but no event in the log makes it"
        return Problem("extra_row", message, doc_kind=kind, doc_key=key)
    if doc_form(have) == doc_form(want):
        return None
    diff = ", ".join(differing_fields(have, want)) or "encoding"
    message = f"{kind} {key}: differs from a fresh fold of its events ({diff})"
    return Problem("row", message, doc_kind=kind, doc_key=key)


def compare_docs(kind: str, stored: Iterable[Doc], fresh: dict[str, Doc]) -> list[Problem]:
    """Stored documents of one kind against a fresh fold, in key order (all in memory:
    the reference the streaming comparison in ``verify.py`` must agree with)."""
    by_key = {d.key: d for d in stored}
    found = (compare_one(kind, k, by_key.get(k), fresh.get(k)) for k in sorted({*by_key, *fresh}))
    return [p for p in found if p is not None]
