"""The one decide-and-append loop, and the bound and error each command gives when races never stop.

The loop runs against a real SQLite store: a race is another writer's
append landing between the command's read and its own append, exactly as in
production. The table at the end pins, per command, how many times it
decides again and which error it gives up with.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sessionstream import projections
from sessionstream.core.errors import (
    ConcurrencyConflict,
    NotFound,
    PreconditionFailed,
    SessionBusy,
)
from sessionstream.core.vocabulary import EventType, campaign_stream, run_stream, session_stream
from sessionstream.eventstore.model import AppendRequest, Doc, NewEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.services.accounts import RunTokens
from sessionstream.services.campaigns import Campaigns
from sessionstream.services.claims import claim_session
from sessionstream.services.decide import ATTEMPTS, decide_and_append
from sessionstream.services.history import ROLLBACK_ATTEMPTS, History
from sessionstream.services.runlog import end_run
from sessionstream.services.runs import RunManager
from sessionstream.services.sessions import Sessions
from tests.scripted_engine import ScriptedEngine

STREAM = campaign_stream("c1")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    store = SQLiteEventStore(tmp_path / "decide.db", projections.ALL)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def note(text: str) -> NewEvent:
    """An event no projection folds: only the stream's version moves."""
    return NewEvent("test.note", {"text": text})


def racing_load(
    store: SQLiteEventStore, stream: str, races: int
) -> tuple[Callable[[], Awaitable[Doc]], list[int]]:
    """A load that, the first ``races`` times, lets another writer append right after the read."""
    seen: list[int] = []

    async def load() -> Doc:
        version = await store.stream_version(stream)
        seen.append(version)
        if len(seen) <= races:
            await store.append(stream, [note(f"other writer {len(seen)}")])
        return Doc("test", stream, {}, version, 0)

    return load, seen


async def test_a_race_makes_the_command_decide_again_on_what_the_other_wrote(
    store: SQLiteEventStore,
) -> None:
    await store.append(STREAM, [note("first")])
    load, seen = racing_load(store, STREAM, races=3)
    decided_on: list[int] = []

    def decide(doc: Doc) -> list[NewEvent]:
        decided_on.append(doc.version)
        return [note(f"decided at {doc.version}")]

    decided = await decide_and_append(store, STREAM, load, decide)
    assert seen == decided_on == [1, 2, 3, 4]  # each attempt read the other writer's append
    assert decided.appended is not None and decided.appended.version == 5
    assert decided.state.version == 4
    assert [e.data["text"] for e in await store.read_stream(STREAM)][-1] == "decided at 4"


async def test_when_races_never_stop_the_command_gives_up_with_its_error(
    store: SQLiteEventStore,
) -> None:
    await store.append(STREAM, [note("first")])
    load, seen = racing_load(store, STREAM, races=1000)
    with pytest.raises(SessionBusy, match="kept changing"):
        await decide_and_append(
            store,
            STREAM,
            load,
            lambda doc: [note("never")],
            attempts=4,
            exhausted=lambda conflict: SessionBusy("it kept changing"),
        )
    assert len(seen) == 4
    # without an error of its own, the last conflict says where the stream really was
    load, seen = racing_load(store, STREAM, races=1000)
    with pytest.raises(ConcurrencyConflict) as caught:
        await decide_and_append(store, STREAM, load, lambda doc: [note("never")], attempts=2)
    assert (caught.value.expected, caught.value.actual) == (seen[-1], seen[-1] + 1)
    assert "never" not in [e.data["text"] for e in await store.read_stream(STREAM)]


async def test_if_match_is_checked_before_deciding_and_a_race_is_a_412_at_once(
    store: SQLiteEventStore,
) -> None:
    await store.append(STREAM, [note("first"), note("second")])
    decided: list[int] = []

    def decide(doc: Doc) -> list[NewEvent]:
        decided.append(doc.version)
        return [note("mine")]

    load, _ = racing_load(store, STREAM, races=0)
    with pytest.raises(PreconditionFailed, match="is at version 2, not 1: reload and retry"):
        await decide_and_append(store, STREAM, load, decide, if_match=1)
    assert decided == []  # a stale tag decides nothing
    load, seen = racing_load(store, STREAM, races=1)
    with pytest.raises(PreconditionFailed, match="changed meanwhile"):
        await decide_and_append(store, STREAM, load, decide, if_match=2, last_writer_wins=True)
    assert len(seen) == 1  # no second attempt: the client must reload
    assert await store.stream_version(STREAM) == 3  # only the other writer's event


async def test_last_writer_wins_appends_over_a_race_and_nothing_is_appended_for_no_events(
    store: SQLiteEventStore,
) -> None:
    await store.append(STREAM, [note("first")])
    load, seen = racing_load(store, STREAM, races=1)
    decided = await decide_and_append(
        store, STREAM, load, lambda doc: [note("mine")], last_writer_wins=True
    )
    assert len(seen) == 1 and decided.appended is not None and decided.appended.version == 3
    load, _ = racing_load(store, STREAM, races=0)
    decided = await decide_and_append(store, STREAM, load, lambda doc: [])
    assert decided.appended is None and await store.stream_version(STREAM) == 3


async def test_also_appends_to_other_streams_in_the_same_transaction(
    store: SQLiteEventStore,
) -> None:
    other = campaign_stream("c2")
    await store.append(other, [note("taken")])
    load, _ = racing_load(store, STREAM, races=0)
    with pytest.raises(ConcurrencyConflict):
        await decide_and_append(
            store,
            STREAM,
            load,
            lambda doc: [note("mine")],
            also=lambda doc: [AppendRequest(other, (note("new"),), 0)],
            attempts=1,
        )
    assert await store.stream_version(STREAM) == 0  # all or nothing
    decided = await decide_and_append(
        store,
        STREAM,
        load,
        lambda doc: [note("mine")],
        also=lambda doc: [AppendRequest(other, (note("next"),), 1)],
    )
    assert decided.appended is not None
    assert [await store.stream_version(s) for s in (STREAM, other)] == [1, 2]


# each caller's bound and error --------------------------------------------------------------
async def always_conflicting(store: SQLiteEventStore, stream: str) -> list[int]:
    """Make every transaction that touches ``stream`` fail as if someone always wrote first."""
    calls: list[int] = []
    transact = store.transact

    async def racing(requests: Any) -> Any:
        if any(r.stream_id == stream for r in requests):
            calls.append(1)
            raise ConcurrencyConflict(stream, 0, 1)
        return await transact(requests)

    store.transact = racing  # type: ignore[method-assign]
    return calls


async def session_fixture(store: SQLiteEventStore) -> tuple[Sessions, str, str]:
    campaigns = Campaigns(store)
    campaign = await campaigns.create_campaign("u1", "c")
    node = await campaigns.add_node("u1", campaign.key, "n", None)
    sessions = Sessions(store, RunManager(store, ScriptedEngine()), RunTokens("s" * 32, 60))
    session = await sessions.create_session("u1", campaign.key, node["id"])
    return sessions, campaign.key, session.key


async def test_the_claim_retries_twenty_times_then_says_busy(store: SQLiteEventStore) -> None:
    _, _, sid = await session_fixture(store)
    calls = await always_conflicting(store, session_stream(sid))
    with pytest.raises(SessionBusy, match="too many concurrent changes"):
        await claim_session(store, "u1", sid, kind="turn", run_input={"message": "hi"})
    assert len(calls) == ATTEMPTS == 20


async def test_a_rollback_retries_ten_times_then_says_busy(store: SQLiteEventStore) -> None:
    _, _, sid = await session_fixture(store)
    await store.append(
        session_stream(sid),
        [
            NewEvent(EventType.SKELETON_REVISED, {"skeleton": {"v": 1}}),
            NewEvent(EventType.SKELETON_REVISED, {"skeleton": {"v": 2}}),
        ],
    )
    calls = await always_conflicting(store, session_stream(sid))
    with pytest.raises(SessionBusy, match="kept changing during the rollback"):
        await History(store).rollback_skeleton("u1", sid, 1)
    assert len(calls) == ROLLBACK_ATTEMPTS == 10
    calls.clear()
    with pytest.raises(PreconditionFailed, match="changed meanwhile"):  # If-Match: no retry
        await History(store).rollback_skeleton("u1", sid, 1, if_match=3)
    assert len(calls) == 1


async def test_adding_a_node_retries_twenty_times_then_reports_the_conflict(
    store: SQLiteEventStore,
) -> None:
    _, cid, _ = await session_fixture(store)
    calls = await always_conflicting(store, campaign_stream(cid))
    with pytest.raises(ConcurrencyConflict):
        await Campaigns(store).add_node("u1", cid, "late", None)
    assert len(calls) == 20
    calls.clear()
    with pytest.raises(ConcurrencyConflict):  # a delete is a 409 at the first race
        await Campaigns(store).delete_campaign("u1", cid)
    assert len(calls) == 1


async def test_ending_a_run_elsewhere_gives_up_quietly(store: SQLiteEventStore) -> None:
    _, _, sid = await session_fixture(store)
    claim = await claim_session(store, "u1", sid, kind="turn", run_input={"message": "hi"})
    calls = await always_conflicting(store, run_stream(claim.run_id))
    assert await end_run(store, claim.run_id, EventType.RUN_CANCELED, {"reason": "x"}) is False
    assert len(calls) == 20
    assert await end_run(store, "run_" + "0" * 32, EventType.RUN_CANCELED, {}) is False


async def test_concurrent_nodes_get_distinct_default_positions(store: SQLiteEventStore) -> None:
    campaigns = Campaigns(store)
    campaign = await campaigns.create_campaign("u1", "c")
    nodes = await asyncio.gather(
        *[campaigns.add_node("u1", campaign.key, f"n{i}", None) for i in range(8)]
    )
    assert sorted(n["position"] for n in nodes) == list(range(1, 9))
    with pytest.raises(NotFound):
        await campaigns.add_node("someone else", campaign.key, "x", None)
