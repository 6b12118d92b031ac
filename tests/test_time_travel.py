"""Time travel: ``as_of`` answers exactly what a client saw at that point of the log.

The property: drive a session through the real HTTP app with a random script
of turns (some observed mid-run), patches, examples and rollbacks; after each
change record the row the client saw beside the log's head; afterwards
``as_of=<head>`` must return each recorded row, and ``as_of=<its time>``
the row at that time's last position. Snapshots are taken every few events so
answers cross snapshot boundaries, and deleting every snapshot changes none.
"""

from __future__ import annotations

import asyncio
import copy
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.conftest as conf
from sessionstream import projections
from sessionstream.core.readmodels import SessionState
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.projections.session import apply_session, fold_session_events
from sessionstream.server.app import create_app
from sessionstream.services.accounts import create_user
from tests.test_history import RevisingEngine
from tests.test_projection_properties import histories, recorded

S = "/api/campaigns/ai-chat-sessions"
Op = tuple[Any, ...]

OPS = st.lists(
    st.one_of(
        st.just(("turn",)),
        st.just(("paused_turn",)),
        st.tuples(st.just("title"), st.text(max_size=12)),
        st.tuples(st.just("skeleton"), st.integers(0, 3)),
        st.tuples(st.just("draft"), st.text(max_size=12)),
        st.just(("examples",)),
        st.tuples(st.just("rollback_skeleton"), st.integers(0, 4)),
        st.tuples(st.just("rollback_draft"), st.integers(0, 3)),
    ),
    min_size=1,
    max_size=10,
)


class Driver:
    """A client and the observations it makes: (head position, row it saw, time)."""

    def __init__(self, client: TestClient[Any, Any], store: SQLiteEventStore, token: str):
        self.client = client
        self.store = store
        self.h = {"Authorization": f"Bearer {token}"}
        self.seen: list[tuple[int, dict[str, Any]]] = []

    async def row(self, sid: str) -> dict[str, Any]:
        r = await self.client.get(f"{S}/{sid}", headers=self.h)
        assert r.status == 200
        row: dict[str, Any] = (await r.json())["session"]
        return row

    async def observe(self, sid: str) -> dict[str, Any]:
        """A row and the head it belongs to: the head must not move while reading it."""
        for _ in range(1000):
            before = await self.store.head_position()
            row = await self.row(sid)
            if await self.store.head_position() == before:
                self.seen.append((before, row))
                return row
            await asyncio.sleep(0.002)
        raise AssertionError("the log never stood still")

    async def idle(self, sid: str) -> None:
        for _ in range(1000):
            if (await self.row(sid))["task_status"] is None:
                return
            await asyncio.sleep(0.005)
        raise AssertionError("session stayed busy")

    async def run(self, sid: str, engine: RevisingEngine, op: Op) -> None:
        c, h = self.client, self.h
        name = op[0]
        if name in ("turn", "paused_turn"):
            engine.gate = asyncio.Event() if name == "paused_turn" else None
            r = await c.post(f"{S}/{sid}/turn", json={"message": f"m{len(self.seen)}"}, headers=h)
            assert r.status == 200, await r.text()
            if engine.gate is not None:
                await asyncio.sleep(0.03)  # mid-run: user message and deltas are in
                await self.observe(sid)
                engine.gate.set()
            await self.idle(sid)
            await self.observe(sid)
            return
        if name == "examples":
            r = await c.post(
                f"{S}/{sid}/generate-examples", json={"leads": [{"id": "L1"}]}, headers=h
            )
            assert r.status in (200, 400), await r.text()
            if r.status == 200:
                await self.idle(sid)
                await self.observe(sid)
            return
        if name == "title":
            r = await c.patch(f"{S}/{sid}", json={"title": op[1]}, headers=h)
        elif name == "skeleton":
            r = await c.patch(f"{S}/{sid}", json={"skeleton": {"k": op[1]}}, headers=h)
        elif name == "draft":
            r = await c.patch(f"{S}/{sid}", json={"draft_body": op[1]}, headers=h)
        elif name == "rollback_skeleton":
            body = {"framework_version": op[1]}
            r = await c.post(f"{S}/{sid}/skeleton/rollback", json=body, headers=h)
        else:
            r = await c.post(f"{S}/{sid}/draft/rollback", json={"index": op[1]}, headers=h)
        assert r.status in (200, 400), await r.text()
        if r.status == 200:
            head = await self.store.head_position()
            self.seen.append((head, (await r.json())["session"]))


async def scenario(tmp: Path, ops: list[Op]) -> None:
    store = SQLiteEventStore(tmp / "t.db", projections.ALL, snapshot_every=3)
    engine = RevisingEngine(words=6)
    app = create_app(conf.test_settings(tmp), store=store, engine=engine)
    async with TestClient(TestServer(app)) as client:
        _, token = await create_user(store, "alice")
        d = Driver(client, store, token)
        r = await client.post("/api/campaigns", json={"name": "c"}, headers=d.h)
        cid = (await r.json())["campaign"]["id"]
        r = await client.post(f"/api/campaigns/{cid}/nodes", json={}, headers=d.h)
        nid = (await r.json())["node"]["id"]
        r = await client.post(S, json={"campaign_id": cid, "node_id": nid}, headers=d.h)
        sid = (await r.json())["session"]["id"]
        await d.observe(sid)
        for op in ops:
            await d.run(sid, engine, op)
        for head, row in d.seen:
            r = await client.get(f"{S}/{sid}", params={"as_of": head}, headers=d.h)
            assert r.status == 200
            body = await r.json()
            assert body == {"session": row, "as_of": head}, (head, ops)
            # by time: the row at that time's last position
            (event,) = await store.read_all(head - 1, limit=1)
            r = await client.get(f"{S}/{sid}", params={"as_of": event.recorded_at}, headers=d.h)
            at_time = await r.json()
            assert at_time["as_of"] >= head
            expected = fold_session_events(
                None, await store.read_stream(f"session-{sid}", to_position=at_time["as_of"])
            )
            assert expected is not None and at_time["session"] == expected["row"]


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=OPS)
def test_as_of_returns_every_row_a_client_observed(ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp), ops))


# snapshots are only a cache ----------------------------------------------------------------
async def test_deleting_every_snapshot_changes_no_answer(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    store = SQLiteEventStore(tmp_path / "t.db", projections.ALL, snapshot_every=4)
    app = create_app(conf.test_settings(tmp_path), store=store, engine=RevisingEngine(words=5))
    client = await aiohttp_client(app)
    _, token = await create_user(store, "alice")
    d = Driver(client, store, token)
    r = await client.post("/api/campaigns", json={"name": "c"}, headers=d.h)
    cid = (await r.json())["campaign"]["id"]
    r = await client.post(f"/api/campaigns/{cid}/nodes", json={}, headers=d.h)
    nid = (await r.json())["node"]["id"]
    r = await client.post(S, json={"campaign_id": cid, "node_id": nid}, headers=d.h)
    sid = (await r.json())["session"]["id"]
    for i in range(4):
        await d.run(sid, RevisingEngine(), ("turn",))
        await d.run(sid, RevisingEngine(), ("title", f"t{i}"))
    await d.run(sid, RevisingEngine(), ("rollback_skeleton", 1))
    await d.run(sid, RevisingEngine(), ("rollback_draft", 0))
    await client.delete(f"{S}/{sid}", headers=d.h)
    head = await store.head_position()

    hits: list[int] = []
    original = store.latest_snapshot

    async def counted(stream_id: str, kind: str, *, max_position: int | None = None) -> Any:
        found = await original(stream_id, kind, max_position=max_position)
        if found is not None:
            hits.append(found[0])
        return found

    store.latest_snapshot = counted  # type: ignore[method-assign]

    async def answers() -> dict[int, Any]:
        out: dict[int, Any] = {}
        for position in range(head + 2):
            r = await client.get(f"{S}/{sid}", params={"as_of": position}, headers=d.h)
            out[position] = (r.status, await r.json())
        return out

    with_snapshots = await answers()
    snapshot_count = (
        sqlite3.connect(tmp_path / "t.db").execute("SELECT COUNT(*) FROM snapshots").fetchone()[0]
    )
    assert snapshot_count >= 5 and hits, "the snapshot path was not exercised"
    conn = sqlite3.connect(tmp_path / "t.db")
    conn.execute("DELETE FROM snapshots")
    conn.commit()
    conn.close()
    hits.clear()
    without = await answers()
    assert not hits
    assert without == with_snapshots
    # and both equal the plain fold of the log, position by position
    events = await store.read_stream(f"session-{sid}")
    for position, (status, body) in with_snapshots.items():
        state = fold_session_events(None, [e for e in events if e.position <= position])
        if state is None or state["deleted"]:
            assert status == 404, position
        else:
            assert status == 200 and body["session"] == state["row"], position
    statuses = {status for status, _ in with_snapshots.values()}
    assert statuses == {200, 404}


# the bulk fold behind as_of is the event-by-event fold --------------------------------------
@settings(max_examples=150, deadline=None)
@given(specs=histories, cut=st.integers(0, 30))
def test_bulk_fold_equals_event_by_event_and_changes_nothing(
    specs: list[tuple[str, dict[str, Any]]], cut: int
) -> None:
    events = recorded(specs)
    data_before = copy.deepcopy([e.data for e in events])
    reference: SessionState | None = None
    for event in events:
        reference = apply_session(reference, event) or reference
    assert fold_session_events(None, events) == reference
    prefix: SessionState | None = None
    for event in events[:cut]:
        prefix = apply_session(prefix, event) or prefix
    frozen = copy.deepcopy(prefix)
    assert fold_session_events(prefix, events[cut:]) == reference  # resumed from a snapshot
    assert prefix == frozen  # the state it started from is untouched
    assert [e.data for e in events] == data_before  # and so is every event
