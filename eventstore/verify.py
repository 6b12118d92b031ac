"""Integrity checks an auditor can run on any store: the log and the read models.

Two questions, answered through the backend contract only, so SQLite and
PostgreSQL are checked by the same code:

1. Is the log intact? Every stream's versions run 1..n, every event's hash is
   sha256 over its predecessor's stored hash and its own canonical bytes, and
   global positions have no gaps.
2. Do the read models say what the log says? Every document equals a fresh
   fold of the events through the store's own projections (the fold a
   rebuild would write), and no document exists that the log does not imply.
   A document carries the version and position of the last event folded into
   it, so this also catches a stream whose newest events were removed.

In bounded memory, whatever the size of the log: it is read once, stream by
stream (``read_by_stream``, a seek on the ``(stream_id, version)`` index), a
page at a time. A stream's documents are complete when the stream ends
(``StreamFold``), and each is compared there with its stored row: the stored
rows of each kind are walked in key order beside it (``scan_docs``), which is
the order the streams come in, so neither side is ever held whole. Gaps need
no second read: positions are unique, so a log whose event count equals its
head position has none; only when it does not are the positions read in order
to name each gap. The rules themselves are pure, in ``eventstore/integrity.py``.

Runs against a live store: the log is checked up to the head seen at the
start. A stored document that moved past that head (a write during the check)
is compared with a fold of its events up to a later head instead, a few rounds
at most before it is reported as unsettled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.integrity import (
    MAX_PROBLEMS,
    ChainCheck,
    Kept,
    Problem,
    StreamChains,
    VerifyReport,
    compare_docs,
    compare_one,
    differing_fields,
    doc_form,
    event_rank,
    gap_problem,
)
from sessionstream.eventstore.model import Doc, RecordedEvent
from sessionstream.eventstore.projector import (
    BatchProjector,
    Projection,
    Refold,
    StreamFold,
    per_stream,
    stream_of,
)

__all__ = [
    "MAX_PROBLEMS",
    "ChainCheck",
    "Problem",
    "VerifyReport",
    "compare_docs",
    "differing_fields",
    "doc_form",
    "verify_store",
]

#: events per read of the log, and stored JSON per read (a page holds at least one event)
PAGE = 1000
PAGE_BYTES = 4 << 20
#: stored documents per read, for each kind
DOC_PAGE = 25

Progress = Callable[[str, int], None]


async def by_stream(store: EventStore, head: int) -> AsyncIterator[list[RecordedEvent]]:
    """The log up to ``head`` in (stream id, version) order, a page at a time."""
    mark = ("", 0)
    while page := await store.read_by_stream(
        mark, limit=PAGE, to_position=head, max_bytes=PAGE_BYTES
    ):
        yield page
        mark = (page[-1].stream_id, page[-1].version)


async def gaps(store: EventStore, head: int, allow_gaps: bool) -> AsyncIterator[Problem]:
    """Each gap in positions up to ``head``, read in position order."""
    last = 0
    while last < head:
        page = await store.read_all(last, limit=PAGE, to_position=head)
        if not page:
            return
        for event in page:
            if (problem := gap_problem(last, event, allow_gaps)) is not None:
                yield problem
            last = max(last, event.position)


async def in_log_order(
    store: EventStore, projections: Sequence[Projection], head: int
) -> list[Doc]:
    """The documents of the projections not keyed by stream, folded from the log read
    in position order up to ``head``: one page and their documents (one per user, per
    token) in memory, never their events."""
    across = tuple(p for p in projections if not per_stream(p))
    if not across:
        return []
    refold = Refold(across, snapshot_every=0)
    last = 0
    while last < head and (page := await store.read_all(last, limit=PAGE, to_position=head)):
        refold.page(page)
        last = page[-1].position
    return refold.projector.documents


class StoredRows:
    """One kind's stored documents in key order, a page at a time."""

    def __init__(self, store: EventStore, kind: str) -> None:
        self.store, self.kind = store, kind
        self.count = 0
        self._page: list[Doc] = []
        self._at = 0
        self._after: str | None = None
        self._done = False

    async def peek(self) -> Doc | None:
        if self._at >= len(self._page) and not self._done:
            self._page = await self.store.scan_docs(self.kind, after=self._after, limit=DOC_PAGE)
            self._at = 0
            self._done = len(self._page) < DOC_PAGE
            if self._page:
                self._after = self._page[-1].key
        return self._page[self._at] if self._at < len(self._page) else None

    def pop(self) -> None:
        self._at += 1
        self.count += 1


class Rows:
    """Fresh folds, each kind's in key order, matched against the stored rows."""

    def __init__(
        self, store: EventStore, projections: Sequence[Projection], head: int, rounds: int
    ) -> None:
        self.store, self.head, self.rounds = store, head, max(1, rounds)
        self.problems = Kept()
        self._rank = {p.kind: n for n, p in enumerate(projections)}
        self._projections = {p.kind: p for p in projections}
        self._stored = {p.kind: StoredRows(store, p.kind) for p in projections}

    @property
    def checked(self) -> int:
        return sum(s.count for s in self._stored.values())

    async def fresh(self, want: Doc) -> None:
        """The fresh fold of one document; every earlier key of its kind is done."""
        rows = self._stored[want.kind]
        while (have := await rows.peek()) is not None and have.key < want.key:
            rows.pop()
            await self._compare(have.kind, have.key, have, None)
        if have is not None and have.key == want.key:
            rows.pop()
            await self._compare(want.kind, want.key, have, want)
        else:
            await self._compare(want.kind, want.key, None, want)

    async def finish(self) -> None:
        """Every stored row left over: the log implied none of them (or not yet)."""
        for rows in self._stored.values():
            while (have := await rows.peek()) is not None:
                rows.pop()
                await self._compare(have.kind, have.key, have, None)

    async def _compare(self, kind: str, key: str, have: Doc | None, want: Doc | None) -> None:
        if have is not None and have.position > self.head:  # written during the check
            settled = await self._settle(kind, key, want)
            if settled is None:
                message = f"{kind} {key}: kept changing during the check; run it again"
                self._add(Problem("unsettled", message, doc_kind=kind, doc_key=key))
                return
            have, want = settled
        if (problem := compare_one(kind, key, have, want)) is not None:
            self._add(problem)

    def _add(self, problem: Problem) -> None:
        self.problems.add((self._rank[problem.doc_kind or ""], problem.doc_key), problem)

    async def _settle(
        self, kind: str, key: str, at_head: Doc | None
    ) -> tuple[Doc | None, Doc | None] | None:
        """The stored row and a fold of its events up to a newer head, once the row
        is no newer than that head (None if it never stops moving)."""
        projection = self._projections[kind]
        for _ in range(self.rounds):
            head = await self.store.head_position()
            later = [
                e
                async for e in self._later_events(projection, key, head)
                if projection.key(e) == key
            ]
            fold = BatchProjector((projection,), lambda _kind, _key: at_head).project(later)
            want = fold.get((kind, key), at_head)
            have = await self.store.get_doc(kind, key)
            if have is None or have.position <= head:
                return have, want
        return None

    async def _later_events(
        self, projection: Projection, key: str, head: int
    ) -> AsyncIterator[RecordedEvent]:
        """The events after the checked head up to ``head`` that may fold into ``key``."""
        if per_stream(projection):
            for event in await self.store.read_stream(stream_of(projection, key), to_position=head):
                if event.position > self.head:
                    yield event
            return
        after = self.head
        while page := await self.store.read_all(after, limit=PAGE, to_position=head):
            for event in page:
                yield event
            after = page[-1].position


async def verify_store(
    store: EventStore,
    *,
    projections: Sequence[Projection] | None = None,
    allow_gaps: bool = False,
    progress: Progress | None = None,
    catch_up_rounds: int = 5,
) -> VerifyReport:
    """Check the hash chains, positions and every read model of an open store."""
    projections = tuple(store.projections if projections is None else projections)
    head = await store.head_position()
    chains = StreamChains()
    # as a rebuild folds (snapshots unchecked), but a projection keyed across streams
    # (usage, tokens) is folded by its own read in log order, holding its documents
    fold = StreamFold(projections, hold=False)
    rows = Rows(store, projections, head, catch_up_rounds)
    async for page in by_stream(store, head):
        for event in page:
            chains.feed(event)
        for doc in fold.feed(page)[0]:
            await rows.fresh(doc)
        if progress is not None:
            progress("events", chains.events)
    # the last stream's documents (one per kind), then those folded in log order
    for doc in sorted(fold.finish()[0], key=lambda d: d.key):
        await rows.fresh(doc)
    for doc in sorted(await in_log_order(store, projections, head), key=lambda d: d.key):
        await rows.fresh(doc)
    await rows.finish()
    if chains.events != chains.last_position and not allow_gaps:
        async for problem in gaps(store, head, allow_gaps):
            chains.problems.add(event_rank(problem), problem)
    problems = (chains.problems.first() + rows.problems.first())[:MAX_PROBLEMS]
    return VerifyReport(
        streams=chains.streams,
        events=chains.events,
        docs=rows.checked,
        head=chains.last_position,
        digest=chains.digest(),
        problems=tuple(problems),
        problem_count=chains.problems.count + rows.problems.count,
        gaps_allowed=allow_gaps,
    )
