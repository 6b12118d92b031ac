"""Runs through storage blips: shorter than the bound they wait, longer they fail truly.

Storage is made to refuse every write (``StorageUnavailable``, as a database
failing over does) for a while in the middle of a streaming turn, or to
commit a write and lose its answer. A blip shorter than
``SESSIONSTREAM_RUN_STORAGE_WAIT_S`` must leave the turn completed with
every word once; a longer one must fail the run with the storage error as
its reason, the run's own task writing that end as soon as storage answers
(not recovery, and not ``interrupted``); either way one ``run.released``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from sessionstream.core.errors import StorageUnavailable
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import AppendRequest, AppendResult, RecordedEvent
from sessionstream.server.keys import RUNS, STORE
from tests.conftest import Api
from tests.scripted_engine import ScriptedEngine
from tests.test_runs import S, wait_idle

TERMINAL = ("run.completed", "run.failed", "run.canceled")


class Outage:
    """Stands between the run and the store's writes: refuses them while ``down``, or
    commits one and then loses its answer."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.real = store.transact
        self.down = False
        self.refused = 0
        self.lose_answers = 0
        self.lost = 0

    async def transact(self, requests: Sequence[AppendRequest]) -> list[AppendResult]:
        if self.down:
            self.refused += 1
            raise StorageUnavailable("lost the PostgreSQL connection (injected); retry")
        results = await self.real(requests)
        if self.lose_answers:
            self.lose_answers -= 1
            self.lost += 1
            raise StorageUnavailable("lost the PostgreSQL connection (answer lost); retry")
        return results


async def start_turn(api: Api, words: int, pace_s: float) -> tuple[str, str, Outage]:
    session = await api.session()
    outage = Outage(api.app[STORE])
    api.app[STORE].transact = outage.transact  # type: ignore[method-assign]
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "go"}, headers=api.h())
    assert r.status in (200, 201, 202), await r.text()
    return session["id"], (await r.json())["runId"], outage


async def first_delta(store: EventStore, run_id: str) -> None:
    for _ in range(1000):
        if any(e.type == "message.delta" for e in await store.read_stream(f"run-{run_id}")):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the run never streamed")


async def the_record(store: EventStore, sid: str, run_id: str) -> tuple[list[RecordedEvent], Any]:
    run_events = await store.read_stream(f"run-{run_id}")
    released = [e for e in await store.read_stream(f"session-{sid}") if e.type == "run.released"]
    return run_events, released


async def test_a_blip_shorter_than_the_bound_leaves_the_turn_complete(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=40, pace_s=0.01))
    store = api.app[STORE]
    sid, run_id, outage = await start_turn(api, 40, 0.01)
    await first_delta(store, run_id)
    outage.down = True
    await asyncio.sleep(0.6)  # the engine streams on meanwhile
    outage.down = False
    await wait_idle(api, sid)
    assert outage.refused > 0, "the blip never met a write"
    events, released = await the_record(store, sid, run_id)
    assert [e.type for e in events if e.type in TERMINAL] == ["run.completed"]
    reply = "".join(f"w{i} " for i in range(40))
    assert "".join(e.data["text"] for e in events if e.type == "message.delta") == reply
    assert events[-1].data["output"]["message"] == reply
    assert [(e.data["run_id"], e.data["outcome"]) for e in released] == [(run_id, "run.completed")]


async def test_a_write_whose_answer_was_lost_is_not_written_twice(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=30, pace_s=0.005))
    store = api.app[STORE]
    sid, run_id, outage = await start_turn(api, 30, 0.005)
    await first_delta(store, run_id)
    outage.lose_answers = 3  # a delta's, and perhaps the end's: committed, answer lost
    await wait_idle(api, sid)
    assert outage.lost == 3
    events, released = await the_record(store, sid, run_id)
    assert [e.type for e in events if e.type in TERMINAL] == ["run.completed"]
    reply = "".join(f"w{i} " for i in range(30))
    assert "".join(e.data["text"] for e in events if e.type == "message.delta") == reply
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    assert len(released) == 1 and released[0].data["outcome"] == "run.completed"


async def test_a_blip_longer_than_the_bound_fails_the_run_with_the_storage_error(
    make_api: Any,
) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=40, pace_s=0.01), run_storage_wait_s=0.3)
    store, runs = api.app[STORE], api.app[RUNS]
    sid, run_id, outage = await start_turn(api, 40, 0.01)
    await first_delta(store, run_id)
    outage.down = True
    await asyncio.sleep(1.5)
    # past the bound the run has failed, and its own task keeps trying to write that end:
    # it holds the run (no other node may take it for dead) and leaves nothing to upkeep
    assert runs.is_local(run_id) and runs._unended == {}
    doc = await store.get_doc("session", sid)
    assert doc is not None and doc.body["row"]["task_status"] is not None
    outage.down = False
    await wait_idle(api, sid)
    events, released = await the_record(store, sid, run_id)
    assert [e.type for e in events if e.type in TERMINAL] == ["run.failed"]
    error = events[-1].data["error"]
    assert error.startswith("storage was unavailable for over 0.3s") and "injected" in error
    assert events[-1].metadata["actor"] == {"type": "run", "id": run_id}
    assert [(e.data["run_id"], e.data["outcome"]) for e in released] == [(run_id, "run.failed")]


async def test_recovery_ends_an_orphan_as_the_system(make_api: Any) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(gate=gate))
    store, runs = api.app[STORE], api.app[RUNS]
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=api.h())
    run_id = (await r.json())["runId"]
    task = runs._tasks.pop(run_id)  # the process that ran it forgot it (died)
    task.cancel()
    await asyncio.sleep(0.05)
    assert await runs.recover() == 1
    events, released = await the_record(store, session["id"], run_id)
    assert events[-1].type == "run.failed" and events[-1].data == {"error": "interrupted"}
    assert events[-1].metadata["actor"] == {"type": "system", "id": "recovery"}
    assert [e.metadata["actor"] for e in released] == [{"type": "system", "id": "recovery"}]


async def test_recovery_leaves_a_run_whose_true_end_is_still_to_write(make_api: Any) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(gate=gate))
    store, runs = api.app[STORE], api.app[RUNS]
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=api.h())
    run_id = (await r.json())["runId"]
    task = runs._tasks.pop(run_id)
    task.cancel()
    await asyncio.sleep(0.05)
    runs._unended[run_id] = ("run.failed", {"error": "the real reason"})
    assert await runs.recover() == 0  # not "interrupted": its own end says what happened
    assert await runs.retry_unended() == 0
    events, released = await the_record(store, session["id"], run_id)
    assert [e.data for e in events if e.type in TERMINAL] == [{"error": "the real reason"}]
    assert len(released) == 1 and released[0].data["outcome"] == "run.failed"


async def test_shutting_down_during_an_outage_does_not_wait_for_storage(make_api: Any) -> None:
    api: Api = await make_api(engine=ScriptedEngine(words=40, pace_s=0.01))
    store, runs = api.app[STORE], api.app[RUNS]
    sid, run_id, outage = await start_turn(api, 40, 0.01)
    await first_delta(store, run_id)
    outage.down = True
    await asyncio.sleep(0.2)
    stopping = asyncio.ensure_future(runs.shutdown())
    done, _ = await asyncio.wait({stopping}, timeout=8)  # the run would wait 60 s for storage
    assert stopping in done, "shutdown waited for storage"
    assert runs._unended == {run_id: ("run.failed", {"error": "interrupted"})}
    outage.down = False
    assert await runs.retry_unended() == 0  # upkeep ends it once storage answers
    events, released = await the_record(store, sid, run_id)
    assert [e.data for e in events if e.type in TERMINAL] == [{"error": "interrupted"}]
    assert len(released) == 1
