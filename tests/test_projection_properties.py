"""The session projection: pure tables, and properties every fold path must share.

Tables pin the documented rules one event at a time (no event loop). The
hypothesis properties generate random valid session histories and check that
every way the service folds them agrees: in one go (``projector.fold``, the
reference), one event at a time from stored JSON states (as snapshots and the
live read model do), resumed from any prefix (time travel), inside a real
SQLite store's append transactions, and after ``rebuild``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionstream import projections
from sessionstream.core import readmodels
from sessionstream.core.readmodels import SessionState
from sessionstream.eventstore.model import GENESIS_HASH, AppendRequest, NewEvent, RecordedEvent
from sessionstream.eventstore.projector import fold
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.projections.run import RunProjection, apply_run
from sessionstream.projections.session import PATCHABLE, SessionProjection, apply_session

SID = "0f8fad5b-d9cb-469f-a165-70867728950e"
STREAM = f"session-{SID}"
SESSION = SessionProjection()
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def at(ms: int) -> str:
    stamp = EPOCH + timedelta(milliseconds=ms)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def T(n: int) -> str:  # the n-th event's time in the tables
    return at(n * 1000)


def recorded(
    specs: list[tuple[str, dict[str, Any]]], times: list[str] | None = None
) -> list[RecordedEvent]:
    """Events of one session stream, the n-th (from 1) recorded at ``T(n)``."""
    return [
        RecordedEvent(
            position=n,
            stream_id=STREAM,
            version=n,
            event_id=str(uuid.UUID(int=n)),
            type=type_,
            data=data,
            metadata={"actor": {"type": "user", "id": "u1"}},
            correlation_id=None,
            recorded_at=times[n - 1] if times else T(n),
            hash=GENESIS_HASH,
        )
        for n, (type_, data) in enumerate(specs, start=1)
    ]


# event specs --------------------------------------------------------------------------

A = {"subject": "Hi %first_name%", "steps": ["open", "ask"]}
B = {"subject": "Hello", "steps": ["ask"]}
C = {"subject": "Hey", "steps": []}
E1 = {"lead_id": "l1", "subject": "s1", "body": "b1"}
E2 = {"lead_id": "l2", "subject": "s2", "body": "b2"}
CREATED = ("session.created", {"id": SID, "user_id": "u1", "campaign_id": "c1", "node_id": "n1"})


def patch(**fields: Any) -> tuple[str, dict[str, Any]]:
    return ("session.patched", {"fields": fields})


def claim(run_id: str, task_status: str = "chat") -> tuple[str, dict[str, Any]]:
    return ("run.claimed", {"run_id": run_id, "kind": "turn", "task_status": task_status})


def release(run_id: str) -> tuple[str, dict[str, Any]]:
    return ("run.released", {"run_id": run_id, "outcome": "completed"})


def skeleton(value: Any) -> tuple[str, dict[str, Any]]:
    return ("skeleton.revised", {"skeleton": value, "run_id": "run_a"})


def draft(subject: str, body: str) -> tuple[str, dict[str, Any]]:
    return ("draft.revised", {"draft_subject": subject, "draft_body": body})


def examples(
    items: list[dict[str, Any]], replace: bool | None = None
) -> tuple[str, dict[str, Any]]:
    data: dict[str, Any] = {"examples": items}
    if replace is not None:
        data["replace"] = replace
    return ("examples.generated", data)


def message(role: str, content: str) -> tuple[str, dict[str, Any]]:
    return ("message.appended", {"role": role, "content": content})


# tables -----------------------------------------------------------------------------------

SESSION_TABLE: list[tuple[str, list[tuple[str, dict[str, Any]]], dict[str, Any]]] = [
    (
        "created: the documented row, empty",
        [CREATED],
        {
            "row.id": SID,
            "row.user_id": "u1",
            "row.campaign_id": "c1",
            "row.node_id": "n1",
            "row.title": None,
            "row.messages": None,
            "row.skeleton": None,
            "row.framework_version": None,
            "row.task_status": None,
            "row.created_at": T(1),
            "row.updated_at": T(1),
            "active_run": None,
            "deleted": False,
        },
    ),
    (
        "first skeleton: version 1, nothing in history",
        [CREATED, skeleton(A)],
        {"row.skeleton": A, "row.framework_version": 1, "row.skeleton_history": None},
    ),
    (
        "a revision pushes the previous skeleton with its own version",
        [CREATED, skeleton(A), skeleton(B), skeleton(C)],
        {
            "row.skeleton": C,
            "row.framework_version": 3,
            "row.skeleton_history": [
                {"framework_version": 1, "skeleton": A, "replaced_at": T(3)},
                {"framework_version": 2, "skeleton": B, "replaced_at": T(4)},
            ],
        },
    ),
    (
        "a skeleton rollback is a revision too",
        [
            CREATED,
            skeleton(A),
            skeleton(B),
            ("skeleton.rolled_back", {"to_version": 1, "skeleton": A}),
        ],
        {
            "row.skeleton": A,
            "row.framework_version": 3,
            "row.skeleton_history": [
                {"framework_version": 1, "skeleton": A, "replaced_at": T(3)},
                {"framework_version": 2, "skeleton": B, "replaced_at": T(4)},
            ],
        },
    ),
    (
        "a PATCHed skeleton then revised: history starts at version 0",
        [CREATED, patch(skeleton=A), skeleton(B)],
        {
            "row.framework_version": 1,
            "row.skeleton_history": [{"framework_version": 0, "skeleton": A, "replaced_at": T(3)}],
        },
    ),
    (
        "a skeleton revision clears the generated examples",
        [CREATED, examples([E1]), skeleton(A)],
        {"row.generated_examples": None},
    ),
    (
        "PATCH skeleton clears the generated examples",
        [CREATED, examples([E1]), patch(skeleton=A)],
        {"row.generated_examples": None, "row.skeleton": A, "row.framework_version": None},
    ),
    (
        "PATCH skeleton and examples together keeps the given examples",
        [CREATED, examples([E1]), patch(skeleton=A, generated_examples=[E2])],
        {"row.generated_examples": [E2], "row.skeleton": A},
    ),
    (
        "PATCH without a skeleton keeps the examples",
        [CREATED, examples([E1]), patch(title="Q3 intro")],
        {"row.generated_examples": [E1], "row.title": "Q3 intro"},
    ),
    (
        "PATCH ignores fields that are not documented as patchable",
        [CREATED, patch(id="x", user_id="evil", created_at="1999", campaign_id="c9", title="ok")],
        {
            "row.id": SID,
            "row.user_id": "u1",
            "row.created_at": T(1),
            "row.campaign_id": "c1",
            "row.title": "ok",
        },
    ),
    (
        "PATCH task_status null frees the claimed run",
        [CREATED, claim("run_a"), patch(task_status=None)],
        {"active_run": None, "row.task_status": None},
    ),
    (
        "PATCH task_status to a value keeps the claimed run",
        [CREATED, claim("run_a"), patch(task_status="examples")],
        {"active_run": "run_a", "row.task_status": "examples"},
    ),
    (
        "a claim sets the status and the active run",
        [CREATED, claim("run_a", "examples")],
        {"active_run": "run_a", "row.task_status": "examples"},
    ),
    (
        "run.released only frees the matching run",
        [CREATED, claim("run_a"), release("run_b")],
        {"active_run": "run_a", "row.task_status": "chat"},
    ),
    (
        "run.released of the active run frees the session",
        [CREATED, claim("run_a"), release("run_a")],
        {"active_run": None, "row.task_status": None},
    ),
    (
        "a late release of an older run does not free a newer claim",
        [CREATED, claim("run_a"), release("run_a"), claim("run_b"), release("run_a")],
        {"active_run": "run_b", "row.task_status": "chat"},
    ),
    (
        "messages append in order",
        [CREATED, message("user", "hi"), message("assistant", "hello")],
        {
            "row.messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        },
    ),
    (
        "examples replace by default",
        [CREATED, examples([E1]), examples([E2])],
        {"row.generated_examples": [E2]},
    ),
    (
        "examples replace=true replaces",
        [CREATED, examples([E1]), examples([E2], replace=True)],
        {"row.generated_examples": [E2]},
    ),
    (
        "examples replace=false appends",
        [CREATED, examples([E1]), examples([E2], replace=False)],
        {"row.generated_examples": [E1, E2]},
    ),
    (
        "examples replace=false onto none",
        [CREATED, examples([E2], replace=False)],
        {"row.generated_examples": [E2]},
    ),
    (
        "first draft: nothing in history",
        [CREATED, draft("s1", "b1")],
        {"row.draft_subject": "s1", "row.draft_body": "b1", "row.draft_history": None},
    ),
    (
        "a draft revision pushes the previous draft",
        [CREATED, draft("s1", "b1"), draft("s2", "b2")],
        {
            "row.draft_subject": "s2",
            "row.draft_history": [{"draft_subject": "s1", "draft_body": "b1", "replaced_at": T(3)}],
        },
    ),
    (
        "a draft rollback is a revision too",
        [
            CREATED,
            draft("s1", "b1"),
            draft("s2", "b2"),
            ("draft.rolled_back", {"index": 0, "draft_subject": "s1", "draft_body": "b1"}),
        ],
        {
            "row.draft_subject": "s1",
            "row.draft_body": "b1",
            "row.draft_history": [
                {"draft_subject": "s1", "draft_body": "b1", "replaced_at": T(3)},
                {"draft_subject": "s2", "draft_body": "b2", "replaced_at": T(4)},
            ],
        },
    ),
    (
        "deleting frees the run and marks the session deleted",
        [CREATED, claim("run_a"), ("session.deleted", {})],
        {"deleted": True, "active_run": None},
    ),
    (
        "updated_at is the last event's time",
        [CREATED, message("user", "hi"), patch(title="t")],
        {"row.updated_at": T(3), "row.created_at": T(1)},
    ),
    (
        "an unknown event type changes nothing, not even updated_at",
        [CREATED, message("user", "hi"), ("session.noted", {"x": 1})],
        {"row.updated_at": T(2), "row.messages": [{"role": "user", "content": "hi"}]},
    ),
]


def lookup(state: dict[str, Any], dotted: str) -> Any:
    value: Any = state
    for part in dotted.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize(
    ("specs", "expected"),
    [(s, e) for _, s, e in SESSION_TABLE],
    ids=[n for n, _, _ in SESSION_TABLE],
)
def test_session_table(specs: list[tuple[str, dict[str, Any]]], expected: dict[str, Any]) -> None:
    state = fold(SESSION, recorded(specs))
    assert state is not None
    for path, value in expected.items():
        assert lookup(state, path) == value, path


def test_events_before_creation_fold_to_nothing() -> None:
    (event,) = recorded([message("user", "hi")])
    assert apply_session(None, event) is None
    assert fold(SESSION, recorded([message("user", "hi"), patch(title="x")])) is None


def test_apply_returns_new_state_and_never_mutates() -> None:
    events = recorded(
        [CREATED, claim("run_a"), skeleton(A), draft("s", "b"), examples([E1]), skeleton(B)]
    )
    state: SessionState | None = None
    for event in events:
        before = copy.deepcopy(state)
        after = apply_session(state, event)
        assert state == before
        assert after is not state
        state = after


def test_unknown_event_returns_the_same_state() -> None:
    created, noted = recorded([CREATED, ("session.noted", {})])
    state = apply_session(None, created)
    assert apply_session(state, noted) is state


def test_session_index() -> None:
    events = recorded([CREATED, claim("run_a")])
    state = fold(SESSION, events)
    assert state is not None
    index = SESSION.index(state)
    assert (index.owner, index.parent, index.created_at) == ("u1", "c1", T(1))
    assert index.active and not index.deleted
    deleted = fold(SESSION, recorded([CREATED, claim("run_a"), ("session.deleted", {})]))
    assert deleted is not None
    assert not SESSION.index(deleted).active and SESSION.index(deleted).deleted


def test_session_key_is_the_stream_suffix() -> None:
    (event,) = recorded([CREATED])
    assert SESSION.key(event) == SID
    other = RecordedEvent(1, "run-run_x", 1, "e", "run.created", {}, {}, STREAM, T(1), GENESIS_HASH)
    assert SESSION.key(other) is None  # a run event correlated to the session is not its own


RUN_CREATED = (
    "run.created",
    {"run_id": "run_a", "kind": "turn", "session_id": SID, "user_id": "u1"},
)
RUN_TABLE: list[tuple[str, list[tuple[str, dict[str, Any]]], dict[str, Any]]] = [
    ("created: queued", [RUN_CREATED], {"status": "queued", "seq": 1, "started_at": None}),
    (
        "started: running",
        [RUN_CREATED, ("run.started", {})],
        {"status": "running", "started_at": T(2), "seq": 2},
    ),
    (
        "progress is the latest counts",
        [
            RUN_CREATED,
            ("run.started", {}),
            ("examples.progress", {"done": 1, "total": 3}),
            ("examples.progress", {"done": 2, "total": 3}),
        ],
        {"progress": {"done": 2, "total": 3}, "seq": 4},
    ),
    (
        "completed keeps its output",
        [RUN_CREATED, ("run.started", {}), ("run.completed", {"output": {"ok": True}})],
        {"status": "completed", "output": {"ok": True}, "finished_at": T(3), "error": None},
    ),
    (
        "failed keeps its error",
        [RUN_CREATED, ("run.failed", {"error": "interrupted"})],
        {"status": "failed", "error": "interrupted", "finished_at": T(2)},
    ),
    (
        "nothing after a terminal event changes the outcome, but seq moves",
        [
            RUN_CREATED,
            ("run.canceled", {"reason": "user"}),
            ("run.completed", {"output": 1}),
            ("run.started", {}),
        ],
        {"status": "canceled", "output": None, "finished_at": T(2), "started_at": None, "seq": 4},
    ),
]


@pytest.mark.parametrize(
    ("specs", "expected"), [(s, e) for _, s, e in RUN_TABLE], ids=[n for n, _, _ in RUN_TABLE]
)
def test_run_table(specs: list[tuple[str, dict[str, Any]]], expected: dict[str, Any]) -> None:
    events = [
        RecordedEvent(
            e.position,
            "run-run_a",
            e.version,
            e.event_id,
            e.type,
            e.data,
            {},
            STREAM,
            e.recorded_at,
            e.hash,
        )
        for e in recorded(specs)
    ]
    state = fold(RunProjection(), events)
    assert state is not None
    for key, value in expected.items():
        assert state[key] == value, key
    if len(events) > 1:  # a run's events before its run.created fold to nothing
        assert apply_run(None, events[-1]) is None


# the read-model shapes ----------------------------------------------------------------------
def _fields(shape: Any) -> set[str]:
    return set(shape.__required_keys__ | shape.__optional_keys__)


def test_every_projection_builds_exactly_its_shape_in_core_readmodels() -> None:
    """The TypedDicts are what every layer reads; a field added on one side only fails here."""
    user_stream = "user-u1"
    created = recorded([CREATED, skeleton(A), claim("run_a")])
    session = fold(SESSION, created)
    assert session is not None
    assert set(session) == _fields(readmodels.SessionState)
    assert set(session["row"]) == readmodels.SessionRow.__required_keys__
    # a fork's row has every field, the optional ``forked_from`` too
    source = {**session["row"]}
    forked = fold(
        SESSION,
        recorded(
            [
                (
                    "session.forked",
                    {
                        **CREATED[1],
                        "row": source,
                        "forked_from": {"session_id": "s0", "position": 3},
                    },
                )
            ]
        ),
    )
    assert forked is not None
    assert set(forked["row"]) == _fields(readmodels.SessionRow)
    assert set(forked["row"]["forked_from"]) == _fields(readmodels.ForkedFrom)
    assert forked["row"]["skeleton"] == source["skeleton"]
    run_events = [
        RecordedEvent(
            1, "run-run_a", 1, "e1", "run.created", RUN_CREATED[1], {}, STREAM, T(1), "h"
        ),
        RecordedEvent(
            2,
            "run-run_a",
            2,
            "e2",
            "examples.progress",
            {"done": 1, "total": 2},
            {},
            STREAM,
            T(2),
            "h",
        ),
    ]
    run = fold(RunProjection(), run_events)
    assert run is not None and set(run) == _fields(readmodels.RunRow)
    assert set(run["progress"]) == _fields(readmodels.RunProgress)
    campaign_events = [
        RecordedEvent(
            1,
            "campaign-c1",
            1,
            "e1",
            "campaign.created",
            {"id": "c1", "user_id": "u1", "name": "c"},
            {},
            None,
            T(1),
            "h",
        ),
        RecordedEvent(
            2,
            "campaign-c1",
            2,
            "e2",
            "node.added",
            {"id": "n1", "position": 1},
            {},
            None,
            T(2),
            "h",
        ),
    ]
    campaign = fold(projections.CampaignProjection(), campaign_events)
    assert campaign is not None and set(campaign) == _fields(readmodels.Campaign)
    assert set(campaign["nodes"][0]) == _fields(readmodels.Node)
    user_events = [
        RecordedEvent(
            1, user_stream, 1, "e1", "user.created", {"id": "u1", "name": "a"}, {}, None, T(1), "h"
        ),
        RecordedEvent(
            2, user_stream, 2, "e2", "token.issued", {"token_hash": "ab"}, {}, None, T(2), "h"
        ),
    ]
    user = fold(projections.UserProjection(), user_events)
    assert user is not None and set(user) == _fields(readmodels.User)
    token = fold(projections.TokenProjection(), user_events)
    assert token == {"user_id": "u1", "issued_at": T(2), "revoked": False}
    assert set(token) == _fields(readmodels.Token)


# properties -------------------------------------------------------------------------------

text = st.text(st.characters(codec="utf-8"), max_size=12)  # no lone surrogates
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), text)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(text, children, max_size=3)
    ),
    max_leaves=8,
)
skeletons = st.dictionaries(text, json_value, max_size=4)
example_items = st.lists(
    st.fixed_dictionaries({"lead_id": text, "subject": text, "body": text}), max_size=3
)
run_ids = st.sampled_from(["run_a", "run_b", "run_c"])
statuses = st.sampled_from([None, "chat", "examples"])
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": text}),
    max_size=3,
)
history_entries = st.lists(
    st.fixed_dictionaries(
        {"framework_version": st.integers(0, 9), "skeleton": skeletons, "replaced_at": text}
    ),
    max_size=2,
)
draft_entries = st.lists(
    st.fixed_dictionaries({"draft_subject": text, "draft_body": text, "replaced_at": text}),
    max_size=2,
)
PATCH_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "messages": st.none() | messages,
    "title": st.none() | text,
    "draft_subject": st.none() | text,
    "draft_body": st.none() | text,
    "skeleton": st.none() | skeletons,
    "skeleton_history": st.none() | history_entries,
    "draft_history": st.none() | draft_entries,
    "framework_version": st.none() | st.integers(0, 20),
    "generated_examples": st.none() | example_items,
    "task_status": statuses,
    # not patchable: must be ignored
    "id": text,
    "created_at": text,
}
assert set(PATCH_VALUES) >= PATCHABLE


def spec(
    type_: str, **data: st.SearchStrategy[Any]
) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    return st.tuples(st.just(type_), st.fixed_dictionaries(data))


session_events = st.one_of(
    spec("session.patched", fields=st.fixed_dictionaries({}, optional=PATCH_VALUES)),
    spec(
        "run.claimed",
        run_id=run_ids,
        kind=st.sampled_from(["turn", "examples"]),
        task_status=statuses,
    ),
    spec("message.appended", role=st.sampled_from(["user", "assistant"]), content=text),
    spec("skeleton.revised", skeleton=skeletons, run_id=run_ids),
    spec("draft.revised", draft_subject=text, draft_body=text),
    st.tuples(
        st.just("examples.generated"),
        st.fixed_dictionaries({"examples": example_items}, optional={"replace": st.booleans()}),
    ),
    spec("run.released", run_id=run_ids, outcome=st.sampled_from(["completed", "failed"])),
    spec("skeleton.rolled_back", to_version=st.integers(0, 5), skeleton=skeletons),
    spec("draft.rolled_back", index=st.integers(0, 3), draft_subject=text, draft_body=text),
    spec("session.deleted"),
)
histories = st.lists(session_events, max_size=25).map(lambda rest: [CREATED, *rest])
gaps_ms = st.lists(st.integers(0, 3000), min_size=30, max_size=30)


def incremental(events: list[RecordedEvent]) -> dict[str, Any] | None:
    """One event at a time from the stored (JSON) state, as the read model folds."""
    stored: str | None = None
    for event in events:
        state = None if stored is None else json.loads(stored)
        before = copy.deepcopy(state)
        after = SESSION.apply(state, event)
        assert state == before, "apply mutated its input"
        if after is not None:
            stored = json.dumps(after)
    return None if stored is None else json.loads(stored)


@settings(max_examples=150, deadline=None)
@given(specs=histories, gaps=gaps_ms, cut=st.integers(0, 30))
def test_every_pure_fold_path_agrees(
    specs: list[tuple[str, dict[str, Any]]], gaps: list[int], cut: int
) -> None:
    times, ms = [], 0
    for gap in gaps[: len(specs)]:
        ms += gap
        times.append(at(ms))
    events = recorded(specs, times)
    reference = fold(SESSION, events)
    assert reference is not None
    assert incremental(events) == reference
    cut = min(cut, len(events))
    resumed = json.loads(json.dumps(fold(SESSION, events[:cut])))  # a snapshot at ``cut``
    assert fold(SESSION, events[cut:], resumed) == reference
    row = reference["row"]
    assert row["created_at"] == times[0] and row["updated_at"] >= row["created_at"]


async def check_snapshot(
    store: SQLiteEventStore, stored: list[RecordedEvent], snapshot_every: int
) -> None:
    """A snapshot, when there is one, is the fold of the stream up to its version."""
    snapshot = await store.latest_snapshot(STREAM, "session")
    if snapshot is None:
        assert snapshot_every == 0 or len(stored) < snapshot_every
        return
    assert snapshot_every > 0
    version, position, state = snapshot
    assert state == fold(SESSION, stored[:version])
    assert position == stored[version - 1].position
    assert len(stored) - version < snapshot_every


async def _through_the_store(
    specs: list[tuple[str, dict[str, Any]]], chunks: list[int], snapshot_every: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteEventStore(Path(tmp) / "p.db", projections.ALL, snapshot_every=snapshot_every)
        await store.open()
        try:
            version, sizes = 0, iter(chunks)
            while version < len(specs):
                size = min(next(sizes, 1) or 1, len(specs) - version)
                batch = tuple(NewEvent(t, d) for t, d in specs[version : version + size])
                if size % 2:
                    await store.append(STREAM, batch, expected_version=version)
                else:  # the other write path: a transaction with an unrelated stream
                    await store.transact(
                        [
                            AppendRequest(STREAM, batch, version),
                            AppendRequest("noise", (NewEvent("n", {}),)),
                        ]
                    )
                version += size
            stored = await store.read_stream(STREAM)
            assert [(e.type, e.data) for e in stored] == [(t, d) for t, d in specs]
            reference = fold(SESSION, stored)
            assert incremental(stored) == reference
            doc = await store.get_doc("session", SID)
            assert doc is not None
            assert doc.body == reference
            assert (doc.version, doc.position) == (stored[-1].version, stored[-1].position)
            assert doc.index == SESSION.index(doc.body)
            await check_snapshot(store, stored, snapshot_every)
            await store.rebuild()  # also empties the document cache
            assert await store.get_doc("session", SID) == doc
            await check_snapshot(store, stored, snapshot_every)
        finally:
            await store.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    specs=histories,
    chunks=st.lists(st.integers(1, 5), max_size=25),
    snapshot_every=st.sampled_from([0, 3, 7]),
)
def test_the_store_folds_like_the_reference(
    specs: list[tuple[str, dict[str, Any]]], chunks: list[int], snapshot_every: int
) -> None:
    asyncio.run(_through_the_store(specs, chunks, snapshot_every))
