"""``verify``: the chain check, the document comparison and the live-store loop, exactly.

Events come from a real SQLite store (so their hashes are real); the expected
digest and problem lists are written from the documented rules, not read back
from the code under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sessionstream import projections
from sessionstream.eventstore.integrity import StreamChains
from sessionstream.eventstore.model import Doc, DocIndex, NewEvent, RecordedEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.verify import (
    MAX_PROBLEMS,
    ChainCheck,
    Problem,
    VerifyReport,
    compare_docs,
    differing_fields,
    verify_store,
)


def campaign(cid: str) -> NewEvent:
    return NewEvent("campaign.created", {"id": cid, "user_id": "u1", "name": cid})


def node(nid: str) -> NewEvent:
    return NewEvent("node.added", {"id": nid, "position": 0})


async def filled(tmp_path: Path) -> SQLiteEventStore:
    store = SQLiteEventStore(tmp_path / "v.db", projections.ALL)
    await store.open()
    await store.append("campaign-c1", [campaign("c1"), node("n1")])
    await store.append("campaign-c2", [campaign("c2")])
    await store.append("campaign-c1", [node("n2")])
    return store


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


class Liar:
    """A store whose log reads return some events altered; all else is the real store."""

    def __init__(self, store: SQLiteEventStore, replace: dict[int, RecordedEvent]) -> None:
        self._store, self._replace = store, replace

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def read_all(self, after: int = 0, **kw: Any) -> list[RecordedEvent]:
        events = await self._store.read_all(after, **kw)
        return [self._replace.get(e.position, e) for e in events]

    async def read_by_stream(self, after: tuple[str, int] = ("", 0), **kw: Any) -> Any:
        events = await self._store.read_by_stream(after, **kw)
        return [self._replace.get(e.position, e) for e in events]


class Busy:
    """A store written to while it is verified: each of the first ``writes`` reads of
    stored campaign rows appends one more campaign first (and a second event to the
    campaign ``c2`` the check has already folded up to the head it saw)."""

    def __init__(self, store: SQLiteEventStore, writes: int) -> None:
        self._store, self.writes, self.scans, self.heads = store, writes, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def head_position(self) -> int:
        self.heads += 1
        return await self._store.head_position()

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


class Counting:
    """A store that counts its reads of the log, and can commit just after the head is read."""

    def __init__(self, store: SQLiteEventStore, commit_after_head: bool = False) -> None:
        self._store, self.reads, self.heads = store, 0, 0
        self.commit_after_head = commit_after_head

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def read_by_stream(self, after: tuple[str, int] = ("", 0), **kw: Any) -> Any:
        self.reads += 1
        return await self._store.read_by_stream(after, **kw)

    async def read_all(self, after: int = 0, **kw: Any) -> list[RecordedEvent]:
        self.reads += 1
        return await self._store.read_all(after, **kw)

    async def head_position(self) -> int:
        self.heads += 1
        head = await self._store.head_position()
        if self.commit_after_head and self.heads == 1:
            await self._store.append("campaign-late", [campaign("late")])
        return head


async def test_the_log_is_read_in_pages_up_to_the_head_seen(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "big.db", projections.ALL)
    await store.open()
    try:
        await store.append("campaign-c1", [campaign("c1"), *[node(f"n{i}") for i in range(1200)]])
        await store.append("campaign-c2", [campaign("c2")])
        counting = Counting(store)
        report = await verify_store(counting, projections=[])  # type: ignore[arg-type]
        assert report.ok and report.events == 1202
        assert counting.reads == 3  # two pages of up to 1,000 events, then the empty one
        late = Counting(store, commit_after_head=True)
        report = await verify_store(late)  # type: ignore[arg-type]
        # the log is checked up to the head it saw; the late campaign's row is newer,
        # so it is compared with a fold up to a later head
        assert report.ok and late.heads == 2 and report.events == 1202 and report.docs == 3
    finally:
        await store.close()
