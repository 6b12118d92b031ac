"""``verify``: the chain check, the document comparison and the live-store loop, exactly.

Events come from a real SQLite store (so their hashes are real); the expected
digest and problem lists are written from the documented rules, not read back
from the code under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sessionstream import projections
from sessionstream.eventstore.integrity import Kept, StreamChains
from sessionstream.eventstore.model import Doc, DocIndex, NewEvent, RecordedEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.verify import (
    DOC_PAGE,
    MAX_PROBLEMS,
    PAGE,
    ChainCheck,
    Problem,
    VerifyReport,
    compare_docs,
    differing_fields,
    verify_store,
)
from tests.sqlite_file import sql


def campaign(cid: str) -> NewEvent:
    return NewEvent("campaign.created", {"id": cid, "user_id": "u1", "name": cid})


def users_campaign(cid: str, user: str = "u1") -> NewEvent:
    """A campaign appended by its user: it counts in that user's usage row."""
    data = {"id": cid, "user_id": user, "name": cid}
    return NewEvent("campaign.created", data, {"actor": {"type": "user", "id": user}})


def node(nid: str) -> NewEvent:
    return NewEvent("node.added", {"id": nid, "position": 0})


async def filled(tmp_path: Path) -> SQLiteEventStore:
    store = SQLiteEventStore(tmp_path / "v.db", projections.ALL)
    await store.open()
    await store.append("campaign-c1", [campaign("c1"), node("n1")])
    await store.append("campaign-c2", [campaign("c2")])
    await store.append("campaign-c1", [node("n2")])
    return store


class Seen:
    """The real store, counting its head and log reads; ``then`` runs once, just after the
    first head is read (a write that lands while the check is under way). A subclass
    changes what else it needs; everything else is the real store."""

    def __init__(
        self,
        store: SQLiteEventStore,
        then: Callable[[SQLiteEventStore], Awaitable[object]] | None = None,
    ) -> None:
        self._store, self._then, self.heads, self.reads = store, then, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def head_position(self) -> int:
        self.heads += 1
        head = await self._store.head_position()
        if self.heads == 1 and self._then is not None:
            await self._then(self._store)
        return head

    async def read_by_stream(self, after: tuple[str, int] = ("", 0), **kw: Any) -> Any:
        self.reads += 1
        return await self._store.read_by_stream(after, **kw)

    async def read_all(self, after: int = 0, **kw: Any) -> list[RecordedEvent]:
        self.reads += 1
        return await self._store.read_all(after, **kw)


def by_hand_digest(heads: list[tuple[str, int, str]]) -> str:
    body = json.dumps(sorted([s, v, h] for s, v, h in heads), separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


# the chain ---------------------------------------------------------------------------------


async def test_an_intact_store_and_its_digest(tmp_path: Path) -> None:
    store = await filled(tmp_path)
    try:
        events = await store.read_all(0)
        report = await verify_store(store)
        c1, c2 = events[3], events[2]
        assert report.ok and report.problems == () and report.problem_count == 0
        assert (report.streams, report.events, report.docs, report.head) == (2, 4, 2, 4)
        assert report.digest == by_hand_digest(
            [("campaign-c1", 3, c1.hash), ("campaign-c2", 1, c2.hash)]
        )
        assert report.first is None and not report.gaps_allowed
        assert report.to_json() == {
            "ok": True,
            "streams": 2,
            "events": 4,
            "docs": 2,
            "head": 4,
            "digest": report.digest,
            "problem_count": 0,
            "problems": [],
        }
        before = report.digest
        await store.append("campaign-c2", [node("n9")])
        assert (await verify_store(store)).digest != before  # the digest covers every head
    finally:
        await store.close()


async def test_progress_is_reported_per_page(tmp_path: Path) -> None:
    store = await filled(tmp_path)
    seen: list[tuple[str, int]] = []
    try:
        await verify_store(store, progress=lambda what, n: seen.append((what, n)))
    finally:
        await store.close()
    assert seen == [("events", 4)]


async def events_of(tmp_path: Path) -> list[RecordedEvent]:
    store = await filled(tmp_path)
    try:
        return await store.read_all(0)
    finally:
        await store.close()


def checked(events: list[RecordedEvent], allow_gaps: bool = False) -> ChainCheck:
    chain = ChainCheck(allow_gaps=allow_gaps)
    for event in events:
        chain.feed(event)
    return chain


def kinds(chain: ChainCheck) -> list[tuple[str, int | None]]:
    return [(p.kind, p.position) for p in chain.problems]


async def test_one_altered_event_is_reported_once(tmp_path: Path) -> None:
    events = await events_of(tmp_path)
    events[1] = dataclasses.replace(events[1], data={"id": "n1", "position": 5})
    chain = checked(events)
    assert kinds(chain) == [("hash", 2)]
    (problem,) = chain.problems
    assert (problem.stream_id, problem.version, problem.is_event) == ("campaign-c1", 2, True)
    assert problem.message == (
        "position 2 (campaign-c1 v2): node.added does not match its hash: "
        "its content or its predecessor's hash was altered"
    )
    assert chain.events == 4 and chain.last_position == 4


async def test_a_version_that_does_not_follow(tmp_path: Path) -> None:
    events = await events_of(tmp_path)
    chain = checked([events[0], events[2], events[3]])  # c1 v2 removed
    assert ("version", 4) in kinds(chain) and ("gap", 3) in kinds(chain)
    version = next(p for p in chain.problems if p.kind == "version")
    assert version.message == "position 4 (campaign-c1 v3): stream version 3 does not follow 1"
    gap = next(p for p in chain.problems if p.kind == "gap")
    assert gap.message == "position 3 (campaign-c2 v1): expected position 2 after 1"


def streamed(events: list[RecordedEvent]) -> StreamChains:
    chains = StreamChains()
    for event in sorted(events, key=lambda e: (e.stream_id, e.version)):
        chains.feed(event)
    return chains


async def test_reading_by_stream_finds_what_reading_by_position_finds(tmp_path: Path) -> None:
    events = await events_of(tmp_path)
    intact = streamed(events)
    assert intact.problems.count == 0 and (intact.events, intact.streams) == (4, 2)
    assert intact.digest() == checked(events).digest()  # the same bytes, hashed as they pass
    altered = list(events)
    altered[1] = dataclasses.replace(events[1], data={"id": "n1", "position": 5})
    assert [(p.kind, p.position) for p in streamed(altered).problems.first()] == [("hash", 2)]
    removed = [events[0], events[2], events[3]]  # c1 v2
    by_stream = {(p.kind, p.position, p.message) for p in streamed(removed).problems.first()}
    by_position = {(p.kind, p.position, p.message) for p in checked(removed).problems}
    assert by_stream == by_position - {p for p in by_position if p[0] == "gap"}
    # two events of one stream swapped in position: their hashes still chain by version,
    # but the versions no longer rise with the positions
    swapped = [dataclasses.replace(events[0], position=2), events[2], events[3]]
    swapped.append(dataclasses.replace(events[1], position=1))
    problems = streamed(swapped).problems.first()
    assert [(p.kind, p.position, p.version) for p in problems] == [("version", 1, 2)]
    assert problems[0].message == (
        "position 1 (campaign-c1 v2): comes before version 1 at position 2"
    )
    assert ("version", 1) in kinds(checked(sorted(swapped, key=lambda e: e.position)))


async def test_a_stream_whose_next_version_shares_a_position(tmp_path: Path) -> None:
    events = await events_of(tmp_path)
    # positions are unique in a log: v2 at v1's position does not rise with its version
    same = [events[0], dataclasses.replace(events[1], position=1), events[2], events[3]]
    problems = streamed(same).problems.first()
    assert [(p.kind, p.position, p.version) for p in problems] == [("version", 1, 2)]
    assert problems[0].message == (
        "position 1 (campaign-c1 v2): comes before version 1 at position 1"
    )


def test_the_digest_of_no_stream() -> None:
    empty = hashlib.sha256(b"[]").hexdigest()  # the digest of an empty list of heads
    assert StreamChains().digest() == ChainCheck().digest() == empty


async def test_the_digest_asked_twice_is_the_same(tmp_path: Path) -> None:
    events = await events_of(tmp_path)
    chains = streamed(events)
    expected = by_hand_digest(
        [("campaign-c1", 3, events[3].hash), ("campaign-c2", 1, events[2].hash)]
    )
    assert chains.digest() == expected
    assert chains.digest() == expected  # asking again adds no stream


def test_kept_problems_are_the_lowest_ranks_however_many_are_found() -> None:
    kept = Kept()
    found = 5 * MAX_PROBLEMS + 7
    for n in reversed(range(found)):  # the worst first: each cut must keep the lowest
        kept.add((n,), Problem("hash", f"p{n}", position=n + 1))
    assert kept.count == found
    assert [p.message for p in kept.first()] == [f"p{n}" for n in range(MAX_PROBLEMS)]


async def test_gaps_are_accepted_only_when_allowed_and_only_forward(tmp_path: Path) -> None:
    events = await events_of(tmp_path)
    moved = [dataclasses.replace(e, position=p) for e, p in zip(events, (2, 5, 6, 9), strict=True)]
    assert kinds(checked(moved, allow_gaps=True)) == []
    assert kinds(checked(moved)) == [("gap", 2), ("gap", 5), ("gap", 9)]
    backwards = [moved[0], moved[2], dataclasses.replace(moved[1], position=6)]
    chain = checked(backwards, allow_gaps=True)
    assert ("gap", 6) in kinds(chain) and chain.last_position == 6


async def test_problems_are_capped_and_counted_past_the_cap(tmp_path: Path) -> None:
    events = await events_of(tmp_path)
    bad = dataclasses.replace(events[0], data={"tampered": True})
    chain = ChainCheck()
    for n in range(1, 151):
        chain.feed(dataclasses.replace(bad, position=n, stream_id=f"s{n}"))
    assert chain.problem_count == 150 and len(chain.problems) == MAX_PROBLEMS == 100
    assert chain.problems[-1].position == 100


async def test_the_report_caps_its_problems_too(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "many.db", projections.ALL)
    await store.open()
    try:
        for n in range(120):
            await store.append(f"campaign-c{n}", [campaign(f"c{n}")])
        events = await store.read_all(0, limit=200)
        altered = {e.position: dataclasses.replace(e, data={**e.data, "name": "X"}) for e in events}
        report = await verify_store(Liar(store, altered), projections=[])  # type: ignore[arg-type]
        assert report.docs == 0 and report.events == 120
        assert (len(report.problems), report.problem_count) == (100, 120)
        assert [p.position for p in report.problems] == list(range(1, 101))
        # with the read models checked too, the documents' problems come after the log's
        report = await verify_store(Liar(store, altered))  # type: ignore[arg-type]
        assert (len(report.problems), report.problem_count) == (100, 240)
        assert {p.kind for p in report.problems} == {"hash"}
    finally:
        await store.close()


# documents ---------------------------------------------------------------------------------


def doc(key: str, body: dict[str, Any], version: int = 1, position: int = 1, **ix: Any) -> Doc:
    return Doc("session", key, body, version, position, DocIndex(**ix))


def test_differing_fields_names_each_part() -> None:
    stored = doc("k", {"row": {"a": 1, "b": 2, "c": 3}, "active_run": "r1"}, 2, 5, owner="u1")
    fresh = doc("k", {"row": {"a": 1, "b": 9, "d": 4}, "active_run": None}, 3, 6, owner="u2")
    assert differing_fields(stored, fresh) == [
        "version 2 != 3",
        "position 5 != 6",
        "index columns",
        "b",
        "c",
        "d",
        "active_run",
    ]
    flat_a, flat_b = doc("k", {"x": 1, "y": [1]}), doc("k", {"x": 1, "y": [2], "z": None})
    # each differing key once; a missing key equals an explicit null
    assert differing_fields(flat_a, flat_b) == ["y"]
    half = doc("k", {"row": {"a": 1}, "n": 1})
    assert differing_fields(half, doc("k", {"a": 2, "n": 2})) == ["a", "n", "row"]
    odd = Doc("session", "k", [1], 1, 1)  # type: ignore[arg-type]
    assert differing_fields(odd, doc("k", {})) == ["body"]
    assert differing_fields(doc("k", {"a": 1}), doc("k", {"a": 1})) == []


def test_compare_docs_in_key_order() -> None:
    stored = [doc("b", {"x": 1}), doc("a", {"x": 1}), doc("z", {"x": 1})]
    fresh = {"a": doc("a", {"x": 1}), "b": doc("b", {"x": 2}), "c": doc("c", {"x": 1})}
    problems = compare_docs("session", stored, fresh)
    assert [(p.kind, p.doc_key, p.doc_kind, p.is_event) for p in problems] == [
        ("row", "b", "session", False),
        ("missing_row", "c", "session", False),
        ("extra_row", "z", "session", False),
    ]
    assert [p.message for p in problems] == [
        "session b: differs from a fresh fold of its events (x)",
        "session c: the log implies it, the store lacks it",
        "session z: stored, but no event in the log makes it",
    ]
    assert problems[0].to_json()["doc_key"] == "b"


async def test_a_wrong_read_model_is_found(tmp_path: Path) -> None:
    store = await filled(tmp_path)
    try:
        events = await store.read_all(0)
        tampered = dataclasses.replace(events[0], data={**events[0].data, "name": "X"})
        report = await verify_store(store, projections=store.projections)
        assert report.ok
        # a store whose log says otherwise than its documents: fold the altered event
        lying = Liar(store, {1: tampered})
        report = await verify_store(lying)  # type: ignore[arg-type]
        assert not report.ok
        assert [(p.kind, p.position or p.doc_key) for p in report.problems] == [
            ("hash", 1),
            ("row", "c1"),
        ]
        assert report.problem_count == 2 and report.first == report.problems[0]
        assert "(name)" in report.problems[1].message
    finally:
        await store.close()


class Liar(Seen):
    """A store whose log reads return some events altered; all else is the real store."""

    def __init__(self, store: SQLiteEventStore, replace: dict[int, RecordedEvent]) -> None:
        super().__init__(store)
        self._replace = replace

    async def read_all(self, after: int = 0, **kw: Any) -> list[RecordedEvent]:
        events = await self._store.read_all(after, **kw)
        return [self._replace.get(e.position, e) for e in events]

    async def read_by_stream(self, after: tuple[str, int] = ("", 0), **kw: Any) -> Any:
        events = await self._store.read_by_stream(after, **kw)
        return [self._replace.get(e.position, e) for e in events]


class Busy(Seen):
    """A store written to while it is verified: each of the first ``writes`` reads of
    stored campaign rows appends one more campaign first (and a second event to the
    campaign ``c2`` the check has already folded up to the head it saw)."""

    def __init__(self, store: SQLiteEventStore, writes: int) -> None:
        super().__init__(store)
        self.writes, self.scans = writes, 0

    async def scan_docs(self, kind: str, **kw: Any) -> list[Doc]:
        if kind == "campaign" and self.scans < self.writes:
            self.scans += 1
            await self._store.append(f"campaign-w{self.scans}", [campaign(f"w{self.scans}")])
            await self._store.append("campaign-c2", [node(f"late{self.scans}")])
        return await self._store.scan_docs(kind, **kw)

    async def get_doc(self, kind: str, key: str) -> Doc | None:
        """Every look at a moving row finds it moved again, while writes last."""
        if kind == "campaign" and self.scans < self.writes:
            self.scans += 1
            await self._store.append("campaign-c2", [node(f"later{self.scans}")])
        return await self._store.get_doc(kind, key)


async def test_verifying_while_written_reads_on_and_settles(tmp_path: Path) -> None:
    store = await filled(tmp_path)
    try:
        busy = Busy(store, writes=1)
        report = await verify_store(busy, catch_up_rounds=3)  # type: ignore[arg-type]
        assert report.ok, report.problems
        # the log is checked up to the head seen at the start; the rows written since
        # (w1, and c2 moved on) are compared with a fold of their events to a later head
        assert (report.events, report.head, report.streams) == (4, 4, 2)
        assert report.docs == 3  # c1, c2 and w1, written during the check
        assert busy.heads == 3  # the start, then one later head for each moved row
    finally:
        await store.close()


async def test_a_store_that_never_settles_is_reported(tmp_path: Path) -> None:
    store = await filled(tmp_path)
    try:
        busy = Busy(store, writes=99)
        report = await verify_store(busy, catch_up_rounds=2)  # type: ignore[arg-type]
        assert not report.ok
        unsettled = [p for p in report.problems if p.kind == "unsettled"]
        assert unsettled[0] == Problem(
            "unsettled",
            "campaign c2: kept changing during the check; run it again",
            doc_kind="campaign",
            doc_key="c2",
        )
        assert {p.kind for p in report.problems} == {"unsettled"}
        zero = Busy(store, writes=99)
        report = await verify_store(zero, catch_up_rounds=0)  # type: ignore[arg-type]
        assert report.problems[0].kind == "unsettled"
        assert zero.heads >= 2  # at least one later round, however few are asked for
    finally:
        await store.close()


def test_report_json_and_ok() -> None:
    problem = Problem("gap", "m", 3, "s", 1)
    report = VerifyReport(1, 1, 0, 3, "d", (problem,), 5, gaps_allowed=True)
    assert not report.ok and report.first is problem
    assert report.to_json()["problems"] == [
        {
            "kind": "gap",
            "message": "m",
            "position": 3,
            "stream_id": "s",
            "version": 1,
            "doc_kind": None,
            "doc_key": None,
        }
    ]
    assert report.to_json()["problem_count"] == 5


@pytest.mark.parametrize("allow", [True, False])
async def test_gaps_allowed_is_reported(tmp_path: Path, allow: bool) -> None:
    store = await filled(tmp_path)
    try:
        assert (await verify_store(store, allow_gaps=allow)).gaps_allowed is allow
    finally:
        await store.close()


def test_differing_fields_of_odd_bodies_and_encodings() -> None:
    odd = Doc("session", "k", [1], 1, 1)  # type: ignore[arg-type]
    assert differing_fields(odd, Doc("session", "k", [1], 1, 1)) == []  # type: ignore[arg-type]
    assert differing_fields(doc("k", {}), odd) == ["body"]
    two = compare_docs("session", [doc("k", {"x": 1, "y": 1})], {"k": doc("k", {"x": 2, "y": 2})})
    assert two[0].message == "session k: differs from a fresh fold of its events (x, y)"
    # equal as Python values, spelled differently when stored: nothing to name but that
    stored = doc("k", {"x": 1}, active=1)
    (problem,) = compare_docs("session", [stored], {"k": doc("k", {"x": 1}, active=True)})
    assert problem.message == "session k: differs from a fresh fold of its events (encoding)"


async def test_the_log_is_read_in_pages_up_to_the_head_seen(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "big.db", projections.ALL)
    await store.open()
    try:
        await store.append("campaign-c1", [campaign("c1"), *[node(f"n{i}") for i in range(1200)]])
        await store.append("campaign-c2", [campaign("c2")])
        counting = Seen(store)
        report = await verify_store(counting, projections=[])  # type: ignore[arg-type]
        assert report.ok and report.events == 1202
        assert counting.reads == 3  # two pages of up to 1,000 events, then the empty one
        late = Seen(store, then=lambda s: s.append("campaign-late", [campaign("late")]))
        report = await verify_store(late)  # type: ignore[arg-type]
        # the log is checked up to the head it saw; the late campaign's row is newer,
        # so it is compared with a fold up to a later head
        assert report.ok and late.heads == 2 and report.events == 1202 and report.docs == 3
    finally:
        await store.close()


# paging, gaps and rows that move, on logs and stores larger than a page ---------------------


async def test_every_stream_is_read_and_a_page_may_end_inside_one(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "pages.db", projections.ALL)
    await store.open()
    try:
        # streams come by id, the empty one first; the first page (PAGE events) ends on
        # campaign-b's first event, and the next goes on from there
        await store.append("", [NewEvent("x", {})])
        await store.append("campaign-a", [campaign("a"), *[node(f"n{i}") for i in range(PAGE - 3)]])
        await store.append("campaign-b", [campaign("b"), node("m1"), node("m2")])
        counting = Seen(store)
        report = await verify_store(counting)  # type: ignore[arg-type]
        assert report.ok, report.problems
        assert (report.events, report.streams, report.head) == (PAGE + 2, 3, PAGE + 2)
        # by stream: two pages, then the empty one; then the log in position order for
        # the projections keyed across streams (usage, tokens): two pages
        assert report.docs == 2 and counting.reads == 3 + 2
    finally:
        await store.close()


async def test_more_stored_rows_than_a_page_of_them(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "rows.db", projections.ALL)
    await store.open()
    try:
        for n in range(2 * DOC_PAGE + 1):
            await store.append(f"campaign-c{n:03}", [campaign(f"c{n:03}")])
        await store.append("campaign-", [campaign("")])  # the smallest key, the empty one
        report = await verify_store(store)
        assert report.ok, report.problems
        assert report.docs == 2 * DOC_PAGE + 2
    finally:
        await store.close()


async def gapped(tmp_path: Path, name: str) -> tuple[SQLiteEventStore, list[RecordedEvent]]:
    """A store holding positions 2 .. PAGE + 3 of a log (as a scoped export imports), and
    an event at PAGE + 5 to import later, after another gap."""
    source = SQLiteEventStore(tmp_path / f"{name}-source.db", projections.ALL)
    await source.open()
    try:
        await source.append("campaign-0", [campaign("0")])
        await source.append("campaign-a", [campaign("a"), *[node(f"n{i}") for i in range(PAGE)]])
        for cid in ("b", "skip", "late"):
            await source.append(f"campaign-{cid}", [campaign(cid)])
        log = await source.read_all(0, limit=PAGE + 10)
    finally:
        await source.close()
    assert [e.position for e in log] == list(range(1, PAGE + 6))
    store = SQLiteEventStore(tmp_path / f"{name}.db", projections.ALL)
    await store.open()
    await store.import_events(log[1 : PAGE + 3])
    return store, [log[PAGE + 4]]


async def test_gaps_are_named_from_a_read_in_pages_up_to_the_head_seen(tmp_path: Path) -> None:
    store, late = await gapped(tmp_path, "strict")
    try:
        checking = Seen(store, then=lambda s: s.import_events(late))
        report = await verify_store(checking)  # type: ignore[arg-type]
        assert (report.events, report.head, report.streams) == (PAGE + 2, PAGE + 3, 2)
        assert report.problems == (
            Problem(
                "gap",
                "position 2 (campaign-a v1): expected position 1 after 0",
                2,
                "campaign-a",
                1,
            ),
        )
        assert report.problem_count == 1
        # three reads by stream (the last one empty), two pages by position for the
        # projections keyed across streams, then two for the gaps; the late import, past
        # a second gap, is not the log checked, but its row is compared once it settles
        assert checking.reads == 3 + 2 + 2 and checking.heads == 2 and report.docs == 3
    finally:
        await store.close()
    store, late = await gapped(tmp_path, "tolerant")
    try:
        checking = Seen(store, then=lambda s: s.import_events(late))
        report = await verify_store(checking, allow_gaps=True)  # type: ignore[arg-type]
        assert report.ok and checking.reads == 3 + 2  # gaps allowed: no read for gaps
    finally:
        await store.close()


async def test_read_model_problems_come_kind_by_kind_in_the_projections_order(
    tmp_path: Path,
) -> None:
    store = SQLiteEventStore(tmp_path / "kinds.db", projections.ALL)
    await store.open()
    try:
        await store.append("campaign-c1", [campaign("c1")])
        created = {"id": "s1", "user_id": "u1", "campaign_id": "c1", "node_id": "n1"}
        await store.append("session-s1", [NewEvent("session.created", created)])
        c1, s1 = await store.read_all(0)
        lying = Liar(
            store,
            {
                1: dataclasses.replace(c1, data={**c1.data, "name": "X"}),
                2: dataclasses.replace(s1, data={**s1.data, "campaign_id": "c9"}),
            },
        )
        report = await verify_store(lying)  # type: ignore[arg-type]
        # the log's problems first, then the documents': sessions before campaigns, as the
        # store lists its projections, though the campaign's stream is read first
        assert [(p.kind, p.position or p.doc_key) for p in report.problems] == [
            ("hash", 1),
            ("hash", 2),
            ("row", "s1"),
            ("row", "c1"),
        ]
    finally:
        await store.close()


class Growing(Seen):
    """A store where, when verify first reads the stored usage rows, one more event of
    user u1 is appended: the usage row moves past the head the check saw."""

    def __init__(self, store: SQLiteEventStore) -> None:
        super().__init__(store)
        self.grown = False

    async def scan_docs(self, kind: str, **kw: Any) -> list[Doc]:
        if kind == "usage" and not self.grown:
            self.grown = True
            await self._store.append("campaign-c3", [users_campaign("c3")])
        return await self._store.scan_docs(kind, **kw)


async def test_a_moving_row_folded_from_many_streams_settles(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "usage.db", projections.ALL)
    await store.open()
    try:
        for cid in ("c1", "c2"):
            await store.append(f"campaign-{cid}", [users_campaign(cid)])
        growing = Growing(store)
        report = await verify_store(growing)  # type: ignore[arg-type]
        # u1's usage row counts three events now: compared with the two the check saw
        # folded on by the third, read from the log after the head (not from its start)
        assert report.ok, report.problems
        assert growing.grown and growing.heads == 2
        usage = await store.get_doc("usage", "u1")
        assert usage is not None and usage.body["events"] == 3
    finally:
        await store.close()


async def test_the_event_at_the_checked_head_is_folded_once(tmp_path: Path) -> None:
    store = await filled(tmp_path)
    try:
        await store.append("campaign-c2", [node("n3")])  # the head is c2's event
        busy = Busy(store, writes=1)  # then c2 moves on during the check
        report = await verify_store(busy, catch_up_rounds=3)  # type: ignore[arg-type]
        assert report.ok, report.problems
        assert busy.heads == 3
    finally:
        await store.close()


def tamper(db: Path, *statements: str) -> None:
    for statement in statements:
        sql(db, statement)


async def test_stored_rows_the_log_does_not_imply_and_rows_it_lacks(tmp_path: Path) -> None:
    db = tmp_path / "rows.db"
    store = SQLiteEventStore(db, projections.ALL)
    await store.open()
    for cid in ("c1", "c2", "c3"):
        await store.append(f"campaign-{cid}", [campaign(cid)])
    await store.close()
    columns = "kind, key, owner, parent, created_at, active, deleted, version, position, body"
    tamper(
        db,
        *[
            f"INSERT INTO docs ({columns}) VALUES ('campaign', '{key}', 'u1', NULL, NULL, "
            "0, 0, 1, 1, '{}')"
            for key in ("a0", "zz")  # before every key the log makes, and after them
        ],
        "DELETE FROM docs WHERE kind = 'campaign' AND key = 'c3'",  # the last one
    )
    store = SQLiteEventStore(db, projections.ALL)
    await store.open()
    try:
        report = await verify_store(store)
        assert report.problems == (
            Problem(
                "extra_row",
                "campaign a0: stored, but no event in the log makes it",
                doc_kind="campaign",
                doc_key="a0",
            ),
            Problem(
                "missing_row",
                "campaign c3: the log implies it, the store lacks it",
                doc_kind="campaign",
                doc_key="c3",
            ),
            Problem(
                "extra_row",
                "campaign zz: stored, but no event in the log makes it",
                doc_kind="campaign",
                doc_key="zz",
            ),
        )
        assert report.problem_count == 3 and report.docs == 4  # a0, c1, c2 and zz read
    finally:
        await store.close()


class Restless(Seen):
    """A store where campaign c2 moves on before the check compares it, and again each
    time its stored row is looked at: it never settles."""

    def __init__(self, store: SQLiteEventStore) -> None:
        super().__init__(store)
        self.moved = 0

    async def move(self) -> None:
        self.moved += 1
        await self._store.append("campaign-c2", [node(f"moved{self.moved}")])

    async def scan_docs(self, kind: str, **kw: Any) -> list[Doc]:
        if kind == "campaign" and not self.moved:
            await self.move()
        return await self._store.scan_docs(kind, **kw)

    async def get_doc(self, kind: str, key: str) -> Doc | None:
        if (kind, key) == ("campaign", "c2"):
            await self.move()
        return await self._store.get_doc(kind, key)


@pytest.mark.parametrize("rounds", [0, 1, 3, None])
async def test_a_row_is_given_the_rounds_asked_for_and_at_least_one(
    tmp_path: Path, rounds: int | None
) -> None:
    store = await filled(tmp_path)
    try:
        restless = Restless(store)
        if rounds is None:  # the signature's default: five rounds
            report = await verify_store(restless)  # type: ignore[arg-type]
        else:
            report = await verify_store(restless, catch_up_rounds=rounds)  # type: ignore[arg-type]
        assert [(p.kind, p.doc_key) for p in report.problems] == [("unsettled", "c2")]
        # the start, then one head a round
        assert restless.heads == 1 + (5 if rounds is None else max(1, rounds))
    finally:
        await store.close()


async def test_gaps_and_broken_links_are_reported_together_by_position(tmp_path: Path) -> None:
    source = SQLiteEventStore(tmp_path / "source.db", projections.ALL)
    await source.open()
    try:
        for cid in ("c0", "c1", "c2"):
            await source.append(f"campaign-{cid}", [campaign(cid)])
        log = await source.read_all(0)
    finally:
        await source.close()
    store = SQLiteEventStore(tmp_path / "scoped.db", projections.ALL)
    await store.open()
    try:
        await store.import_events(log[1:])  # positions 2 and 3: the first is a gap
        altered = dataclasses.replace(log[2], data={**log[2].data, "name": "X"})
        report = await verify_store(Liar(store, {3: altered}))  # type: ignore[arg-type]
        assert [(p.kind, p.position or p.doc_key) for p in report.problems] == [
            ("gap", 2),
            ("hash", 3),
            ("row", "c2"),
        ]
    finally:
        await store.close()


async def test_rows_keyed_across_streams_are_folded_up_to_the_head_seen(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "late-usage.db", projections.ALL)
    await store.open()
    try:
        for cid in ("c1", "c2"):
            await store.append(f"campaign-{cid}", [users_campaign(cid)])
        # user u1 appends once more just after verify reads the head
        late = Seen(store, then=lambda s: s.append("campaign-late", [users_campaign("late")]))
        report = await verify_store(late)  # type: ignore[arg-type]
        # u1's usage is folded from the log up to the head seen (two events); its stored
        # row, three events on, is then compared with that fold carried on to a later head
        assert report.ok, report.problems
        # the start, then a round each for u1's usage row and the late campaign's row
        assert report.head == 2 and late.heads == 3
    finally:
        await store.close()


async def test_rows_keyed_across_streams_are_matched_in_key_order(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "users.db", projections.ALL)
    await store.open()
    try:
        # u2 appears in the log before u1: their usage rows are still compared in key order
        for cid, user in (("c1", "u2"), ("c2", "u1")):
            await store.append(f"campaign-{cid}", [users_campaign(cid, user)])
        report = await verify_store(store)
        assert report.ok, report.problems
        assert report.docs == 4  # two campaigns, two users' usage
    finally:
        await store.close()
