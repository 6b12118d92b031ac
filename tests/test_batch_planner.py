"""The batch planner's decisions as a table: no event loop, no database.

Each row is a log that already holds some events, a batch of callers' groups
of requests, and what each caller must be answered: events appended (their
stream, versions and positions), an idempotent no-op (the ids it returns and
the stream's version), a version conflict, or a refusal. Both backends run
these rules (``eventstore/batch.py``); ``tests/contract/`` checks that they
write what was decided.

Every row runs twice: with every stored event id known up front (how
PostgreSQL plans) and ``optimistic`` (how SQLite plans: ids are looked up only
when a decision depends on them). The optimistic run must give the same
answers while asking for no more than the row says, except in rows where the
database's ``UNIQUE (event_id)`` is what catches a retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from sessionstream.core.errors import ConcurrencyConflict, ValidationFailed
from sessionstream.eventstore.batch import (
    NO_HEAD,
    BatchPlan,
    BatchPlanner,
    Decision,
    StreamHead,
    Unknown,
    check_import,
)
from sessionstream.eventstore.model import (
    GENESIS_HASH,
    AppendRequest,
    AppendResult,
    Doc,
    DocIndex,
    NewEvent,
    RecordedEvent,
    recompute_hash,
    record_request,
)

AT = "2026-12-01T10:00:00.000Z"


# the vocabulary of the table ---------------------------------------------------------


@dataclass(frozen=True)
class New:
    """Appended: ``stream`` reached these versions at these positions."""

    stream: str
    versions: tuple[int, ...]
    positions: tuple[int, ...]


@dataclass(frozen=True)
class Dup:
    """An idempotent no-op: these stored ids returned, the stream at ``version``."""

    stream: str
    ids: tuple[str, ...]
    version: int


@dataclass(frozen=True)
class Conflict:
    stream: str
    expected: int
    actual: int


@dataclass(frozen=True)
class Invalid:
    """Refused as malformed; ``words`` appear in the message."""

    words: str


Answer = list[New | Dup] | Conflict | Invalid


def req(stream: str, *ids: str, expected: int | None = None, **overrides: Any) -> AppendRequest:
    """A request whose events are named by their ids (``overrides`` patch every event)."""
    events = tuple(
        NewEvent(
            overrides.get("type", "test.happened"),
            overrides.get("data", {"id": event_id}),
            event_id=event_id,
            correlation_id=overrides.get("correlation_id"),
        )
        for event_id in ids
    )
    return AppendRequest(overrides.get("stream_id", stream), events, expected)


@dataclass(frozen=True)
class Row:
    name: str
    #: the log before the batch: (stream, event ids) appended in order
    log: tuple[tuple[str, tuple[str, ...]], ...]
    batch: tuple[tuple[AppendRequest, ...], ...]
    answers: tuple[Answer, ...]
    #: optimistic: the ids it asks about, in order (and nothing else)
    asks: tuple[tuple[str, ...], ...] = ()
    #: optimistic: a stored id is planned afresh; the database's UNIQUE refuses it
    backstop: bool = False


XY = (("X", ("a", "b")), ("Y", ("c",)))  # X at version 2 (positions 1, 2), Y at 1 (3)

ROWS = [
    # expected versions ------------------------------------------------------------------
    Row("a new stream, no check", (), ((req("N", "n1", "n2"),),), ([New("N", (1, 2), (1, 2))],)),
    Row(
        "a new stream, expecting none",
        (),
        ((req("N", "n1", expected=0),),),
        ([New("N", (1,), (1,))],),
    ),
    Row(
        "an absent stream expected to exist",
        (),
        ((req("N", "n1", expected=5),),),
        (Conflict("N", 5, 0),),
        asks=(("n1",),),
    ),
    Row("the matching version", XY, ((req("X", "n1", expected=2),),), ([New("X", (3,), (4,))],)),
    Row(
        "a stale version",
        XY,
        ((req("X", "n1", expected=1),),),
        (Conflict("X", 1, 2),),
        asks=(("n1",),),
    ),
    Row(
        "a version from the future",
        XY,
        ((req("Y", "n1", expected=3),),),
        (Conflict("Y", 3, 1),),
        asks=(("n1",),),
    ),
    Row(
        "two callers expecting the same version: the first wins",
        XY,
        ((req("X", "n1", expected=2),), (req("X", "n2", expected=2),)),
        ([New("X", (3,), (4,))], Conflict("X", 2, 3)),
        asks=(("n2",),),
    ),
    Row(
        "a caller expecting what the one before it left",
        XY,
        ((req("X", "n1", expected=2),), (req("X", "n2", "n3", expected=3),)),
        ([New("X", (3,), (4,))], [New("X", (4, 5), (5, 6))]),
    ),
    Row(
        "one group, two requests to one stream, chained",
        XY,
        ((req("X", "n1", expected=2), req("X", "n2", expected=3)),),
        ([New("X", (3,), (4,)), New("X", (4,), (5,))],),
    ),
    Row(
        "one group across streams takes contiguous positions",
        XY,
        ((req("Y", "n1", expected=1), req("Z", "n2", "n3", expected=0), req("X", "n4")),),
        ([New("Y", (2,), (4,)), New("Z", (1, 2), (5, 6)), New("X", (3,), (7,))],),
    ),
    Row(
        "a group with one failing request is refused whole",
        XY,
        ((req("Y", "n1", expected=1), req("X", "n2", expected=0)), (req("Y", "n3", expected=1),)),
        (Conflict("X", 0, 2), [New("Y", (2,), (4,))]),
        asks=(("n2",),),
    ),
    Row(
        "a failing caller is dropped alone; the next takes its positions",
        XY,
        ((req("X", "n1"),), (req("Y", "n2", expected=7),), (req("Q", "n3", expected=0),)),
        ([New("X", (3,), (4,))], Conflict("Y", 7, 1), [New("Q", (1,), (5,))]),
        asks=(("n2",),),
    ),
    # stored event ids: idempotent retries ---------------------------------------------------
    Row(
        "a retry, no check",
        XY,
        ((req("X", "a", "b"),),),
        ([Dup("X", ("a", "b"), 2)],),
        backstop=True,
    ),
    Row(
        "a retry expecting the version it once saw",
        XY,
        ((req("X", "a", "b", expected=0),),),
        ([Dup("X", ("a", "b"), 2)],),
        asks=(("a", "b"),),
    ),
    Row(
        "a retry expecting the current version",
        XY,
        ((req("X", "a", "b", expected=2),),),
        ([Dup("X", ("a", "b"), 2)],),
        backstop=True,
    ),
    Row(
        "a retry of part of an append",
        XY,
        ((req("X", "b", expected=1),),),
        ([Dup("X", ("b",), 2)],),
        asks=(("b",),),
    ),
    Row(
        "a retry returns records in log order",
        XY,
        ((req("X", "b", "a", expected=0),),),
        ([Dup("X", ("a", "b"), 2)],),
        asks=(("b", "a"),),
    ),
    Row(
        "stored ids mixed with new ones",
        XY,
        ((req("X", "b", "n1", expected=1),),),
        (Invalid("some of these event ids are already stored"),),
        asks=(("b", "n1"),),
    ),
    Row(
        "stored ids on another stream",
        XY,
        ((req("Z", "c", expected=3),),),
        (Invalid("another stream"),),
        asks=(("c",),),
    ),
    Row(
        "a retry reports the version its batch left",
        XY,
        ((req("X", "n1"),), (req("X", "a", "b", expected=0),)),
        ([New("X", (3,), (4,))], [Dup("X", ("a", "b"), 3)]),
        asks=(("a", "b"),),
    ),
    Row(
        "a retry batched with fresh appends changes only what is new",
        XY,
        ((req("X", "a"),), (req("F", "n1", expected=0),), (req("X", "n2", expected=2),)),
        ([Dup("X", ("a",), 2)], [New("F", (1,), (4,))], [New("X", (3,), (5,))]),
        asks=(("n2",),),  # "a" planned afresh moved X on: is "n2" a retry?
        backstop=True,
    ),
    Row(
        "two retries of one append in one batch, one stale, one whole",
        XY,
        ((req("X", "a", expected=0),), (req("X", "a", "b", expected=1),)),
        ([Dup("X", ("a",), 2)], [Dup("X", ("a", "b"), 2)]),
        asks=(("a",), ("b",)),
    ),
    # event ids repeated inside one batch ---------------------------------------------------
    Row(
        "an id twice in one request",
        XY,
        ((req("X", "n1", "n1"),), (req("Y", "n2"),)),
        (Invalid("repeats an event id"), [New("Y", (2,), (4,))]),
    ),
    Row(
        "an id twice in one request is malformed before it is stale",
        XY,
        ((req("X", "n1", "n1", expected=0),),),
        (Invalid("repeats an event id"),),
    ),
    Row(
        "a stored id twice in one request",
        XY,
        ((req("X", "a", "a"),),),
        (Invalid("repeats an event id"),),
    ),
    Row(
        "an id in two requests of one group: the second is a no-op",
        (),
        ((req("X", "n1"), req("X", "n1", expected=0)),),
        ([New("X", (1,), (1,)), Dup("X", ("n1",), 1)],),
    ),
    Row(
        "an id in two callers' groups: the second is a no-op",
        (),
        ((req("X", "n1", expected=0),), (req("X", "n1", expected=0),)),
        ([New("X", (1,), (1,))], [Dup("X", ("n1",), 1)]),
    ),
    Row(
        "an id in two callers' groups on two streams: the second is refused",
        (),
        ((req("X", "n1"),), (req("Y", "n1"),), (req("Y", "n2"),)),
        ([New("X", (1,), (1,))], Invalid("another stream"), [New("Y", (1,), (2,))]),
    ),
    Row(
        "an id of a refused group is free for the next",
        XY,
        ((req("Y", "n1"), req("X", "n2", expected=9)), (req("Y", "n1", expected=1),)),
        (Conflict("X", 9, 2), [New("Y", (2,), (4,))]),
        asks=(("n2",),),
    ),
    # malformed text and data ----------------------------------------------------------------
    Row(
        "a NUL in a type",
        (),
        ((req("X", "n1", type="bad\x00type"),), (req("Y", "n2"),)),
        (Invalid("NUL"), [New("Y", (1,), (1,))]),
    ),
    Row("a NUL in a stream id", (), ((req("X", "n1", stream_id="X\x00"),),), (Invalid("NUL"),)),
    Row(
        "a lone surrogate in a correlation id",
        (),
        ((req("X", "n1", correlation_id="session-\ud800"),),),
        (Invalid("UTF-8"),),
    ),
    Row(
        "a lone surrogate in data",
        (),
        ((req("X", "n1", data={"t": "\ud800"}),),),
        (Invalid("append rejected"),),
    ),
    Row(
        "data with no JSON form",
        (),
        ((req("X", "n1", data={"o": object()}),),),
        (Invalid("append rejected"),),
    ),
]


# running a row -------------------------------------------------------------------------


def build_log(
    log: Sequence[tuple[str, Sequence[str]]],
) -> tuple[int, dict[str, StreamHead], dict[str, RecordedEvent]]:
    """The log's head, stream heads and events by id after appending ``log`` in order."""
    head, heads, stored = 0, {}, {}
    for stream, ids in log:
        current = heads.get(stream, NO_HEAD)
        records = record_request(
            req(stream, *ids), head=head, version=current.version, prev_hash=current.hash, at=AT
        )
        head = records[-1].position
        heads[stream] = StreamHead(records[-1].version, records[-1].hash)
        stored.update((r.event_id, r) for r in records)
    return head, heads, stored


def drive(
    planner: BatchPlanner,
    batch: Sequence[Sequence[AppendRequest]],
    stored: dict[str, RecordedEvent],
) -> list[tuple[str, ...]]:
    """What a backend does: decide each group, answering (and returning) its questions."""
    asked: list[tuple[str, ...]] = []
    for group in batch:
        while True:
            try:
                decision = planner.decide(group)
                break
            except Unknown as unknown:
                assert unknown.what == "events"
                asked.append(unknown.ident)
                planner.learn(unknown.ident, [stored[i] for i in unknown.ident if i in stored])
        planner.accept(decision)
    return asked


def answer(outcome: list[AppendResult] | Exception) -> Answer:
    if isinstance(outcome, ConcurrencyConflict):
        assert outcome.expected is not None
        return Conflict(outcome.stream_id, outcome.expected, outcome.actual)
    if isinstance(outcome, ValidationFailed):
        return Invalid(outcome.message)
    assert isinstance(outcome, list), outcome
    return [
        Dup(r.stream_id, tuple(e.event_id for e in r.events), r.version)
        if r.duplicate
        else New(
            r.stream_id, tuple(e.version for e in r.events), tuple(e.position for e in r.events)
        )
        for r in outcome
    ]


def matches(got: Answer, want: Answer) -> bool:
    if isinstance(want, Invalid):
        return isinstance(got, Invalid) and want.words in got.words
    return got == want


def plan(
    row: Row, optimistic: bool
) -> tuple[BatchPlan, list[tuple[str, ...]], dict[str, RecordedEvent]]:
    head, heads, stored = build_log(row.log)
    known = {} if optimistic else stored
    planner = BatchPlanner(head, heads, known, at=AT, optimistic=optimistic)
    asked = drive(planner, row.batch, stored)
    return planner.plan(), asked, stored


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_every_id_known(row: Row) -> None:
    result, asked, stored = plan(row, optimistic=False)
    got = [answer(o) for o in result.outcomes]
    assert len(got) == len(row.answers)
    for g, want in zip(got, row.answers, strict=True):
        assert matches(g, want), (g, want)
    assert asked == []
    check_writes(result, stored)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_optimistic_asks_only_when_an_answer_depends_on_it(row: Row) -> None:
    result, asked, stored = plan(row, optimistic=True)
    assert asked == list(row.asks)
    if row.backstop:
        # it planned a stored id afresh: the insert fails and the backend replans
        assert {r.event_id for r in result.records} & set(stored)
        return
    got = [answer(o) for o in result.outcomes]
    for g, want in zip(got, row.answers, strict=True):
        assert matches(g, want), (g, want)
    check_writes(result, stored)


def check_writes(result: BatchPlan, stored: dict[str, RecordedEvent]) -> None:
    """The rows to write are exactly the answers' new events, chained and gapless."""
    appended = [
        e
        for o in result.outcomes
        if isinstance(o, list)
        for r in o
        if not r.duplicate
        for e in r.events
    ]
    assert result.records == appended
    head = max((e.position for e in stored.values()), default=0)
    assert [r.position for r in result.records] == list(range(head + 1, head + 1 + len(appended)))
    assert result.head == head + len(appended)
    assert not {r.event_id for r in result.records} & set(stored)
    previous = {e.stream_id: e.hash for e in sorted(stored.values(), key=lambda e: e.position)}
    for record in result.records:
        assert record.hash == recompute_hash(previous.get(record.stream_id, GENESIS_HASH), record)
        previous[record.stream_id] = record.hash
        assert result.streams[record.stream_id].version >= record.version
    for stream, head_after in result.streams.items():
        last = [r for r in result.records if r.stream_id == stream][-1]
        assert head_after == StreamHead(last.version, last.hash)


def test_a_decision_changes_nothing_until_accepted() -> None:
    """The sure path writes each group before accepting it; a refused write leaves no trace."""
    head, heads, stored = build_log(XY)
    planner = BatchPlanner(head, heads, stored, at=AT)
    first = planner.decide([req("X", "n1", expected=2)])
    assert not first.refused and first.head == head + 1
    planner.accept(Decision(ValidationFailed("the database refused it")))
    again = planner.decide([req("X", "n1", expected=2)])
    assert again == first  # the refused write consumed no version, position or id
    planner.accept(again)
    assert answer(planner.decide([req("X", "n1")]).outcome) == [Dup("X", ("n1",), 3)]
    result = planner.plan()
    assert [answer(o) for o in result.outcomes] == [
        Invalid("the database refused it"),
        answer(again.outcome),
    ]


# documents and snapshots -------------------------------------------------------------------


class Counter:
    """Counts each stream's events; refuses an event whose data says so."""

    kind = "counter"
    version = 1
    snapshots = True

    def key(self, event: RecordedEvent) -> str | None:
        return event.stream_id if event.stream_id != "plain" else None

    def apply(self, state: dict[str, Any] | None, event: RecordedEvent) -> dict[str, Any] | None:
        if event.data.get("refuse"):
            raise ValidationFailed("the projection refuses this event")
        return {"count": (state or {"count": 0})["count"] + 1}

    def index(self, state: dict[str, Any]) -> DocIndex:
        return DocIndex()


def test_groups_fold_documents_and_due_snapshots() -> None:
    head, heads, stored = build_log(XY)
    loaded = {("counter", "X"): Doc("counter", "X", {"count": 2}, 2, 2)}
    marks = {("X", "counter"): 0}
    planner = BatchPlanner(
        head,
        heads,
        stored,
        at=AT,
        projections=(Counter(),),
        snapshot_every=2,
        load_doc=lambda kind, key: loaded.get((kind, key)),
        last_snapshot=lambda stream, kind: marks.get((stream, kind), 0),
    )
    batch = [
        [req("X", "n1")],  # X: 3 events, snapshot due (3 - 0 >= 2)
        [req("X", "n2"), req("Y", "n3", data={"refuse": True})],  # refused by the fold
        [req("X", "n4")],  # X: 4, last snapshot 3: not due
        [req("X", "n5"), req("plain", "n6")],  # X: 5: due; "plain" folds into nothing
    ]
    drive(planner, batch, stored)
    result = planner.plan()
    assert isinstance(result.outcomes[1], ValidationFailed)
    docs = {d.key: d for d in result.docs}
    assert docs["X"].body == {"count": 5} and docs["X"].version == 5
    assert "Y" not in docs  # the refused group left no document behind
    assert [(s.stream_id, s.version, s.state) for s in result.snapshots] == [
        ("X", 3, {"count": 3}),
        ("X", 5, {"count": 5}),
    ]
    assert result.snapshots[-1].position == docs["X"].position == result.records[-2].position


def test_a_backend_loader_may_ask_for_a_document() -> None:
    """PostgreSQL reads documents up front; one it did not foresee is asked for."""
    prefetched: dict[tuple[str, str], Doc | None] = {}

    def load(kind: str, key: str) -> Doc | None:
        if (kind, key) not in prefetched:
            raise Unknown("doc", (kind, key))
        return prefetched[(kind, key)]

    planner = BatchPlanner(0, {}, {}, at=AT, projections=(Counter(),), load_doc=load)
    with pytest.raises(Unknown) as asked:
        planner.decide([req("X", "n1")])
    assert asked.value.ident == ("counter", "X")
    prefetched[("counter", "X")] = None
    decision = planner.decide([req("X", "n1")])
    assert decision.docs[("counter", "X")].body == {"count": 1}


# imports --------------------------------------------------------------------------------------

IMPORT_ROWS = [
    ("continues the log", ((1, "X", 1, "i1"), (2, "Y", 1, "i2"), (3, "X", 2, "i3")), None),
    ("not above the head", ((4, "X", 3, "i1"),), "not above"),
    ("out of order", ((5, "P", 1, "i1"), (5, "P", 2, "i2")), "not above"),
    ("a version gap", ((5, "X", 5, "i1"),), "does not follow"),
    ("an id the log holds", ((5, "P", 1, "a"),), "already stored"),
    ("an id twice", ((5, "P", 1, "i1"), (6, "P", 2, "i1")), "already stored"),
    ("a NUL in a type", ((5, "P", 1, "i\x00"),), "NUL"),
]


@pytest.mark.parametrize(("name", "events", "error"), IMPORT_ROWS, ids=[r[0] for r in IMPORT_ROWS])
def test_import_checks(
    name: str, events: tuple[tuple[int, str, int, str], ...], error: str | None
) -> None:
    log = () if error is None else (*XY, ("X", ("d",)))  # X at 3, head 4
    head, heads, stored = build_log(log)
    recorded = [RecordedEvent(p, s, v, i, "t", {}, {}, None, AT, f"h{p}") for p, s, v, i in events]
    if error is not None:
        with pytest.raises(ValidationFailed, match=error):
            check_import(recorded, head, heads, stored)
        return
    after = check_import(recorded, head, heads, stored)
    assert after == {"X": StreamHead(2, "h3"), "Y": StreamHead(1, "h2")}
