"""Adaptive delta coalescing (``services/coalesce.py``) and the writer's idle work.

The rule: a run keeps at most one ``message.delta`` in the writer's pipeline;
text that arrives meanwhile joins the next delta as soon as that one commits,
so an idle writer gets a delta per token and a busy one fewer, larger ones.
Nothing here is timed: the engine and the store are driven step by step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from sessionstream.engines.base import ExampleInput, ExampleResult, StreamItem, TextDelta, TurnInput
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.groupcommit import GroupCommit, IdleWork
from sessionstream.eventstore.model import AppendRequest, AppendResult, NewEvent
from sessionstream.server.keys import STORE
from sessionstream.services import coalesce
from sessionstream.services.coalesce import Coalescer
from tests.conftest import Api
from tests.test_runs import S, wait_idle


# the rule itself -------------------------------------------------------------------------
def test_text_is_due_at_once_when_no_delta_of_the_run_is_being_written() -> None:
    c = Coalescer()
    assert not c.due(0.0, writing=False)  # nothing waits
    c.add("a")
    assert c.due(0.0, writing=False)
    assert c.wake_at(writing=False) is not None


def test_text_waits_while_the_runs_delta_is_in_the_writer_and_joins_the_next() -> None:
    c = Coalescer()
    c.add("a")
    assert c.take(1.0) == "a"
    for word in ("b", "c", "d"):
        c.add(word)
        assert not c.due(1.001, writing=True)
        assert c.wake_at(writing=True) is None  # the commit wakes the run, not a clock
    assert c.due(1.002, writing=False)
    assert c.take(1.002) == "bcd"
    assert not c


def test_the_floor_spaces_one_runs_deltas_and_no_more() -> None:
    c = Coalescer(floor_s=0.03)
    c.add("a")
    assert c.due(5.0, writing=False)  # the first is never held back
    c.take(5.0)
    c.add("b")
    assert not c.due(5.02, writing=False)
    assert c.wake_at(writing=False) == pytest.approx(5.03)
    assert c.due(5.03, writing=False)
    c.add("")  # an empty piece is no text
    assert c.take(5.03) == "b"
    c.add("")
    assert not c.due(9.0, writing=False)


# a run against a real store -----------------------------------------------------------------
class StepEngine:
    """Yields ``words`` words; before each, waits until ``ready()`` says so."""

    name = "step"
    model: str | None = None

    def __init__(self, words: int, ready: Callable[[int], Any] | None = None) -> None:
        self.words = words
        self.ready = ready
        self.yielded = 0

    async def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        for i in range(self.words):
            if self.ready is not None:
                await self.ready(i)
            yield TextDelta(f"w{i} ")
            self.yielded += 1

    async def example(self, inp: ExampleInput) -> ExampleResult:
        raise AssertionError("not used")

    async def aclose(self) -> None:
        return None


def has_delta(requests: Sequence[AppendRequest]) -> bool:
    return any(e.type == "message.delta" for r in requests for e in r.events)


async def deltas_of(store: EventStore, run_id: str) -> list[str]:
    events = await store.read_stream(f"run-{run_id}")
    return [e.data["text"] for e in events if e.type == "message.delta"]


async def start(api: Api) -> tuple[str, str]:
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "m"}, headers=api.h())
    assert r.status == 200, await r.text()
    return session["id"], (await r.json())["runId"]


async def eventually(check: Callable[[], Any], what: str) -> None:
    for _ in range(2000):
        if await check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(what)


async def test_an_idle_writer_gets_a_delta_per_token(make_api: Any) -> None:
    """Each word comes only once the one before it has committed: the writer is idle
    whenever a word arrives, so none waits for company (a fixed window would join them)."""
    holder: dict[str, Any] = {}

    async def after_previous_committed(i: int) -> None:
        if i:
            store, run_id = holder["store"], holder["run"]

            async def committed() -> bool:
                return len(await deltas_of(store, run_id)) == i

            await eventually(committed, f"word {i - 1} never committed")

    engine = StepEngine(8, after_previous_committed)
    gate = asyncio.Event()

    async def first(i: int) -> None:
        await gate.wait()
        await after_previous_committed(i)

    engine.ready = first
    api: Api = await make_api(engine=engine, delta_coalesce_ms=0.0)
    holder["store"] = api.app[STORE]
    sid, holder["run"] = await start(api)
    gate.set()
    await wait_idle(api, sid)
    assert await deltas_of(api.app[STORE], holder["run"]) == [f"w{i} " for i in range(8)]


async def test_text_gathers_while_the_runs_delta_commits(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first delta is held in the writer; the engine is read on meanwhile (it is
    not stuck behind the commit) and everything it says joins one next delta."""
    engine = StepEngine(10)
    api: Api = await make_api(engine=engine, delta_coalesce_ms=0.0)
    store: EventStore = api.app[STORE]
    held = asyncio.Event()
    release = asyncio.Event()
    in_writer: list[int] = []
    transact = store.transact

    async def slow_first_delta(requests: Sequence[AppendRequest]) -> list[AppendResult]:
        is_delta = has_delta(requests)
        if is_delta:
            in_writer.append(1)
            assert len(in_writer) == 1, "two deltas of one run in the writer at once"
            if not held.is_set():
                held.set()
                await release.wait()
        try:
            return await transact(requests)
        finally:
            if is_delta:
                in_writer.pop()

    monkeypatch.setattr(store, "transact", slow_first_delta)
    sid, run_id = await start(api)
    await asyncio.wait_for(held.wait(), 30)

    async def all_read() -> bool:
        return engine.yielded == 10

    await eventually(all_read, "the engine was not read while a delta was being written")
    release.set()
    await wait_idle(api, sid)
    assert await deltas_of(store, run_id) == ["w0 ", "".join(f"w{i} " for i in range(1, 10))]


async def test_a_run_ending_while_its_delta_commits_loses_no_text(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply is whole and in order, and ends the run, though the engine finished
    while a delta was still in the writer."""
    engine = StepEngine(5)
    api: Api = await make_api(engine=engine, delta_coalesce_ms=0.0)
    store: EventStore = api.app[STORE]
    transact = store.transact
    release = asyncio.Event()

    async def held(requests: Sequence[AppendRequest]) -> list[AppendResult]:
        if has_delta(requests):
            await release.wait()
        return await transact(requests)

    monkeypatch.setattr(store, "transact", held)
    sid, run_id = await start(api)

    async def all_read() -> bool:
        return engine.yielded == 5

    await eventually(all_read, "the engine was not read on")
    release.set()
    row = await wait_idle(api, sid)
    assert row["messages"][-1]["content"] == "w0 w1 w2 w3 w4 "
    assert "".join(await deltas_of(store, run_id)) == "w0 w1 w2 w3 w4 "


# the writer's idle work ---------------------------------------------------------------------
def _request() -> AppendRequest:
    return AppendRequest("s", (NewEvent("x.happened", {}),))


async def test_compaction_waits_while_appends_wait_and_runs_when_none_do() -> None:
    commits = GroupCommit(max_batch=10)
    work = IdleWork(commits, backlog=2)
    work.add(["run-a"])
    waiting = asyncio.ensure_future(commits.submit([_request()]))
    await asyncio.sleep(0)
    assert commits.waiting == 1
    assert work.next() is None  # a delta waits: the run's packing does not go first
    batch = await commits.next_batch()
    assert work.next() == "run-a"  # nothing waits now
    assert work.next() is None
    commits.answer(batch, [[]])
    await waiting


async def test_compaction_past_its_backlog_goes_between_batches_anyway() -> None:
    commits = GroupCommit(max_batch=10)
    work = IdleWork(commits, backlog=2)
    work.add(["run-a", "run-b", "run-c"])
    waiting = asyncio.ensure_future(commits.submit([_request()]))
    await asyncio.sleep(0)
    assert work.next() == "run-a"  # three waiting, past a backlog of two
    assert work.next() is None  # two left: appends go first again
    assert work.take_all() == ["run-b", "run-c"] and len(work) == 0
    commits.answer(await commits.next_batch(), [[]])
    await waiting


def test_full_text_is_written_as_soon_as_it_may_and_stops_the_reading() -> None:
    c = Coalescer(floor_s=10.0, max_chars=8)
    c.add("abcd")
    c.take(0.0)
    c.add("abcd")
    assert not c.full and not c.due(1.0, writing=False)  # the floor holds it
    c.add("efgh")
    assert c.full  # the run reads no more from its engine
    assert not c.due(1.0, writing=True)  # one delta in the writer at a time, still
    assert c.due(1.0, writing=False)  # the floor does not hold full text
    assert c.take(1.0) == "abcdefgh" and not c.full


async def test_an_engine_far_ahead_of_the_log_makes_bounded_deltas(
    make_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the first delta is held in the writer, the engine is read only until the
    text waiting is full: no delta is much larger than ``MAX_CHARS``, none is lost."""
    monkeypatch.setattr(coalesce, "MAX_CHARS", 40)
    engine = StepEngine(60)  # "w0 ".."w59 ": 3 to 4 characters a word
    api: Api = await make_api(engine=engine, delta_coalesce_ms=0.0)
    store: EventStore = api.app[STORE]
    transact = store.transact
    release = asyncio.Event()

    async def held(requests: Sequence[AppendRequest]) -> list[AppendResult]:
        if has_delta(requests):
            await release.wait()
        return await transact(requests)

    monkeypatch.setattr(store, "transact", held)
    sid, run_id = await start(api)
    await asyncio.sleep(0.2)
    assert engine.yielded <= 1 + 40 // 3 + 1  # the first, then full text stops the reading
    release.set()
    await wait_idle(api, sid)
    deltas = await deltas_of(store, run_id)
    assert "".join(deltas) == "".join(f"w{i} " for i in range(60))
    assert max(len(d) for d in deltas) < 40 + 4


async def test_text_held_by_the_floor_is_written_when_it_passes_though_the_engine_is_silent(
    make_api: Any,
) -> None:
    """With a floor, text that came too soon after a delta waits for the floor, not for
    the engine's next word: the second word is written while the engine says nothing."""
    store_of: dict[str, Any] = {}

    async def pace(i: int) -> None:
        if i == 2:  # silent until the second word has been written on its own
            store, run_id = store_of["store"], store_of["run"]

            async def second_written() -> bool:
                return len(await deltas_of(store, run_id)) == 2

            await eventually(second_written, "the floor never wrote the waiting text")

    engine = StepEngine(3, pace)
    api: Api = await make_api(engine=engine, delta_coalesce_ms=50.0)
    store_of["store"] = api.app[STORE]
    gate = asyncio.Event()
    engine.ready = lambda i: gate.wait() if i == 0 else pace(i)
    sid, store_of["run"] = await start(api)
    gate.set()
    await wait_idle(api, sid)
    assert await deltas_of(api.app[STORE], store_of["run"]) == ["w0 ", "w1 ", "w2 "]
