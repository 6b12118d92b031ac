"""The fold rules, one hand-written table per projection.

``test_projection_properties`` shows the fold paths agree with each other; that
cannot catch a wrong rule in the code they share. Here every expected row is
written from the documented semantics (``shared/spec/API.md``, the seeds and the
projections' docstrings), never computed by the code under test, so a changed
rule fails a row.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from sessionstream.core.readmodels import SessionState
from sessionstream.eventstore.model import GENESIS_HASH, DocIndex, RecordedEvent
from sessionstream.eventstore.projector import fold
from sessionstream.projections.account import TokenProjection, UserProjection
from sessionstream.projections.campaign import CampaignProjection, apply_campaign
from sessionstream.projections.run import RunProjection, apply_run
from sessionstream.projections.session import (
    SessionProjection,
    apply_session,
    fold_session_events,
)
from tests.test_projection_properties import (
    CREATED,
    SESSION_TABLE,
    SID,
    A,
    B,
    C,
    T,
    claim,
    draft,
    lookup,
    message,
    patch,
    recorded,
    skeleton,
)

Spec = tuple[str, dict[str, Any]]


def stream(
    stream_id: str, specs: list[Spec], correlation: str | None = None
) -> list[RecordedEvent]:
    """Events of one stream, the n-th (from 1) at version and position n, recorded at T(n)."""
    return [
        RecordedEvent(
            position=n,
            stream_id=stream_id,
            version=n,
            event_id=str(uuid.UUID(int=n)),
            type=type_,
            data=data,
            metadata={},
            correlation_id=correlation,
            recorded_at=T(n),
            hash=GENESIS_HASH,
        )
        for n, (type_, data) in enumerate(specs, start=1)
    ]


# campaigns ----------------------------------------------------------------------------

CAMPAIGN = CampaignProjection()
C_CREATED: Spec = ("campaign.created", {"id": "c1", "user_id": "u1", "name": "Q3 outreach"})


def node(node_id: str, position: int, **extra: Any) -> Spec:
    return ("node.added", {"id": node_id, "position": position, **extra})


CAMPAIGN_TABLE: list[tuple[str, list[Spec], dict[str, Any]]] = [
    (
        "created: named, owned, no nodes, not deleted",
        [C_CREATED],
        {
            "id": "c1",
            "user_id": "u1",
            "name": "Q3 outreach",
            "created_at": T(1),
            "updated_at": T(1),
            "nodes": [],
            "deleted": False,
        },
    ),
    (
        "a node keeps its fields; name optional, type 'ai' by default",
        [C_CREATED, node("n1", 0)],
        {
            "nodes": [
                {
                    "id": "n1",
                    "campaign_id": "c1",
                    "name": None,
                    "position": 0,
                    "type": "ai",
                    "created_at": T(2),
                }
            ],
            "updated_at": T(2),
            "created_at": T(1),
        },
    ),
    (
        "nodes append in order, with the name and type given",
        [C_CREATED, node("n1", 0, name="Intro"), node("n2", 1, name="Bump", type="manual")],
        {
            "nodes": [
                {
                    "id": "n1",
                    "campaign_id": "c1",
                    "name": "Intro",
                    "position": 0,
                    "type": "ai",
                    "created_at": T(2),
                },
                {
                    "id": "n2",
                    "campaign_id": "c1",
                    "name": "Bump",
                    "position": 1,
                    "type": "manual",
                    "created_at": T(3),
                },
            ],
            "updated_at": T(3),
        },
    ),
    (
        "deleting marks it deleted and keeps its nodes",
        [C_CREATED, node("n1", 0), ("campaign.deleted", {})],
        {"deleted": True, "updated_at": T(3), "name": "Q3 outreach", "nodes.0.id": "n1"},
    ),
    (
        "an unknown event changes nothing, not even updated_at",
        [C_CREATED, ("campaign.renamed", {"name": "x"})],
        {"name": "Q3 outreach", "updated_at": T(1), "deleted": False},
    ),
]


def _lookup(state: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        state = state[int(part)] if isinstance(state, list) else state[part]
    return state


@pytest.mark.parametrize(
    ("specs", "expected"),
    [(s, e) for _, s, e in CAMPAIGN_TABLE],
    ids=[n for n, _, _ in CAMPAIGN_TABLE],
)
def test_campaign_table(specs: list[Spec], expected: dict[str, Any]) -> None:
    state = fold(CAMPAIGN, stream("campaign-c1", specs))
    assert state is not None
    for path, value in expected.items():
        assert _lookup(state, path) == value, path


def test_campaign_events_before_creation_fold_to_nothing() -> None:
    events = stream("campaign-c1", [node("n1", 0), ("campaign.deleted", {})])
    assert all(apply_campaign(None, e) is None for e in events)


def test_campaign_fold_never_mutates_and_unknown_returns_same() -> None:
    created, added, renamed = stream("campaign-c1", [C_CREATED, node("n1", 0), ("x.y", {})])
    state = apply_campaign(None, created)
    assert state is not None
    before = copy.deepcopy(state)
    after = apply_campaign(state, added)
    assert state == before and after is not state
    assert apply_campaign(state, renamed) is state


def test_campaign_index_columns() -> None:
    state = fold(CAMPAIGN, stream("campaign-c1", [C_CREATED]))
    assert state is not None
    assert CAMPAIGN.index(state) == DocIndex(owner="u1", created_at=T(1), deleted=False)
    gone = fold(CAMPAIGN, stream("campaign-c1", [C_CREATED, ("campaign.deleted", {})]))
    assert gone is not None
    assert CAMPAIGN.index(gone) == DocIndex(owner="u1", created_at=T(1), deleted=True)
    assert (CAMPAIGN.kind, CAMPAIGN.key(stream("campaign-c1", [C_CREATED])[0])) == (
        "campaign",
        "c1",
    )


# users and tokens -----------------------------------------------------------------------

USER = UserProjection()
TOKEN = TokenProjection()
U_CREATED: Spec = ("user.created", {"id": "u1", "name": "ana"})
ISSUED: Spec = ("token.issued", {"token_hash": "h1"})
REVOKED: Spec = ("token.revoked", {"token_hash": "h1"})

USER_TABLE: list[tuple[str, list[Spec], dict[str, Any]]] = [
    (
        "created: no tokens",
        [U_CREATED],
        {"id": "u1", "name": "ana", "created_at": T(1), "tokens": 0},
    ),
    ("each issue counts", [U_CREATED, ISSUED, ISSUED], {"tokens": 2, "created_at": T(1)}),
    ("a revoke uncounts", [U_CREATED, ISSUED, ISSUED, REVOKED], {"tokens": 1}),
    ("never below zero", [U_CREATED, REVOKED, ISSUED], {"tokens": 1}),
    ("other events change nothing", [U_CREATED, ISSUED, ("user.renamed", {})], {"tokens": 1}),
]


@pytest.mark.parametrize(
    ("specs", "expected"), [(s, e) for _, s, e in USER_TABLE], ids=[n for n, _, _ in USER_TABLE]
)
def test_user_table(specs: list[Spec], expected: dict[str, Any]) -> None:
    state = fold(USER, stream("user-u1", specs))
    assert state is not None
    for key, value in expected.items():
        assert state[key] == value, key


def test_user_before_creation_and_index() -> None:
    assert fold(USER, stream("user-u1", [ISSUED])) is None
    created, renamed = stream("user-u1", [U_CREATED, ("user.renamed", {})])
    state = USER.evolve(None, created)
    assert state is not None and USER.evolve(state, renamed) is state
    assert USER.columns(state) == DocIndex(created_at=T(1))


TOKEN_TABLE: list[tuple[str, str, list[Spec], dict[str, Any] | None]] = [
    (
        "issued: the user is the stream's id",
        "user-u1",
        [ISSUED],
        {"user_id": "u1", "issued_at": T(1), "revoked": False},
    ),
    (
        "revoked keeps when it was issued",
        "user-u1",
        [ISSUED, REVOKED],
        {"user_id": "u1", "issued_at": T(1), "revoked": True},
    ),
    ("a revoke of an unknown token makes none", "user-u1", [REVOKED], None),
    (
        "a token outside a user stream has no user",
        "other-u1",
        [ISSUED],
        {"user_id": "", "issued_at": T(1), "revoked": False},
    ),
]


@pytest.mark.parametrize(
    ("stream_id", "specs", "expected"),
    [(i, s, e) for _, i, s, e in TOKEN_TABLE],
    ids=[n for n, *_ in TOKEN_TABLE],
)
def test_token_table(stream_id: str, specs: list[Spec], expected: dict[str, Any] | None) -> None:
    state = None
    for event in stream(stream_id, specs):
        state = TOKEN.evolve(state, event)
    assert state == expected


def test_token_key_and_index() -> None:
    issued, revoked, created = stream("user-u1", [ISSUED, REVOKED, U_CREATED])
    assert (TOKEN.key(issued), TOKEN.key(revoked), TOKEN.key(created)) == ("h1", "h1", None)
    assert TOKEN.columns({"user_id": "u1", "issued_at": T(1), "revoked": False}) == DocIndex(
        owner="u1", deleted=False
    )
    assert TOKEN.columns({"user_id": "u1", "issued_at": T(1), "revoked": True}) == DocIndex(
        owner="u1", deleted=True
    )
    assert (TOKEN.kind, TOKEN.snapshots, USER.kind) == ("token", False, "user")


# runs -------------------------------------------------------------------------------------

RUN = RunProjection()
R_CREATED: Spec = (
    "run.created",
    {"run_id": "r1", "kind": "turn", "session_id": SID, "user_id": "u1"},
)
STARTED: Spec = ("run.started", {})
COMPLETED: Spec = ("run.completed", {"output": {"text": "done"}})
FAILED: Spec = ("run.failed", {"error": "model down"})
CANCELED: Spec = ("run.canceled", {"reason": "user"})

RUN_TABLE: list[tuple[str, list[Spec], dict[str, Any]]] = [
    (
        "created: every documented field",
        [R_CREATED],
        {
            "id": "r1",
            "kind": "turn",
            "session_id": SID,
            "user_id": "u1",
            "status": "queued",
            "created_at": T(1),
            "started_at": None,
            "finished_at": None,
            "updated_at": T(1),
            "error": None,
            "seq": 1,
            "progress": None,
            "output": None,
        },
    ),
    (
        "progress with a count missing",
        [R_CREATED, STARTED, ("examples.progress", {"done": 1})],
        {"progress": {"done": 1, "total": None}, "status": "running", "updated_at": T(3)},
    ),
    (
        "failed without a reason",
        [R_CREATED, STARTED, ("run.failed", {})],
        {"status": "failed", "error": None, "output": None, "finished_at": T(3)},
    ),
    (
        "completed without output, no error",
        [R_CREATED, ("run.completed", {})],
        {"status": "completed", "output": None, "error": None, "started_at": None},
    ),
    (
        "nothing after completed changes the outcome",
        [R_CREATED, STARTED, COMPLETED, FAILED, CANCELED, STARTED, ("examples.progress", {})],
        {
            "status": "completed",
            "output": {"text": "done"},
            "error": None,
            "started_at": T(2),
            "finished_at": T(3),
            "progress": None,
            "seq": 7,
            "updated_at": T(7),
        },
    ),
    (
        "nothing after failed changes the outcome",
        [R_CREATED, FAILED, COMPLETED, CANCELED, STARTED],
        {
            "status": "failed",
            "error": "model down",
            "output": None,
            "started_at": None,
            "finished_at": T(2),
            "seq": 5,
            "updated_at": T(5),
        },
    ),
    (
        "an unknown event moves seq only",
        [R_CREATED, STARTED, ("run.noted", {"x": 1})],
        {"status": "running", "seq": 3, "updated_at": T(3), "started_at": T(2)},
    ),
]


@pytest.mark.parametrize(
    ("specs", "expected"), [(s, e) for _, s, e in RUN_TABLE], ids=[n for n, _, _ in RUN_TABLE]
)
def test_run_rules_table(specs: list[Spec], expected: dict[str, Any]) -> None:
    state = fold(RUN, stream("run-r1", specs, correlation=f"session-{SID}"))
    assert state is not None
    for key, value in expected.items():
        assert state[key] == value, key


@pytest.mark.parametrize(
    ("specs", "active"),
    [
        ([R_CREATED], True),  # a queued run holds its session as much as a running one
        ([R_CREATED, STARTED], True),
        ([R_CREATED, STARTED, COMPLETED], False),
        ([R_CREATED, FAILED], False),
        ([R_CREATED, CANCELED], False),
    ],
    ids=["queued", "running", "completed", "failed", "canceled"],
)
def test_run_index_lists_by_owner_and_session(specs: list[Spec], active: bool) -> None:
    state = fold(RUN, stream("run-r1", specs))
    assert state is not None
    assert RUN.index(state) == DocIndex(owner="u1", parent=SID, created_at=T(1), active=active)


def test_run_fold_never_mutates() -> None:
    events = stream("run-r1", [R_CREATED, STARTED, COMPLETED, FAILED])
    state = None
    for event in events:
        before = copy.deepcopy(state)
        after = apply_run(state, event)
        assert state == before and (state is None or after is not state)
        state = after
    assert (RUN.kind, RUN.key(events[0])) == ("run", "r1")


# sessions: the table through every fold -------------------------------------------------


def _time_travel(specs: list[Spec]) -> SessionState | None:
    return fold_session_events(None, recorded(specs))


def _resumed(specs: list[Spec]) -> SessionState | None:
    """Half one event at a time (as snapshots are kept), half in one go (as_of)."""
    events = recorded(specs)
    half = len(events) // 2
    state: SessionState | None = None
    for event in events[:half]:
        state = apply_session(state, event)
    return fold_session_events(state, events[half:])


@pytest.mark.parametrize("folder", [_time_travel, _resumed], ids=["batch", "resumed"])
@pytest.mark.parametrize(
    ("specs", "expected"),
    [(s, e) for _, s, e in SESSION_TABLE],
    ids=[n for n, _, _ in SESSION_TABLE],
)
def test_session_table_through_fold_session_events(
    folder: Any, specs: list[Spec], expected: dict[str, Any]
) -> None:
    state = folder(specs)
    assert state is not None
    for path, value in expected.items():
        assert lookup(dict(state), path) == value, path


def test_an_unknown_event_does_not_stop_the_fold() -> None:
    specs = [CREATED, message("user", "hi"), ("session.noted", {}), message("user", "again")]
    for state in (_time_travel(specs), fold(SessionProjection(), recorded(specs))):
        assert state is not None
        assert state["row"]["messages"] == [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": "again"},
        ]
        assert state["row"]["updated_at"] == T(4)


def test_events_before_creation_are_skipped_in_a_batch() -> None:
    state = _time_travel([message("user", "lost"), CREATED, message("user", "kept")])
    assert state is not None
    assert state["row"]["messages"] == [{"role": "user", "content": "kept"}]
    assert _time_travel([message("user", "lost")]) is None


def test_a_second_creation_starts_the_row_again() -> None:
    state = _time_travel([CREATED, message("user", "old"), skeleton(A), CREATED, skeleton(B)])
    assert state is not None
    row = state["row"]
    assert (row["messages"], row["skeleton"], row["framework_version"]) == (None, B, 1)
    assert row["skeleton_history"] is None and row["created_at"] == T(4)


def test_fold_session_events_changes_neither_its_state_nor_event_data() -> None:
    given_list = [{"role": "user", "content": "from a patch"}]
    events = recorded([CREATED, patch(messages=given_list), message("user", "x")])
    start = apply_session(apply_session(None, events[0]), events[1])
    assert start is not None
    before = copy.deepcopy(start)
    after = fold_session_events(start, events[2:] + recorded([CREATED])[1:])
    assert start == before
    assert given_list == [{"role": "user", "content": "from a patch"}]
    assert after is not None and after is not start
    assert after["row"]["messages"] == [*given_list, {"role": "user", "content": "x"}]
    # a list the fold copied once is extended in place, later events see all of it
    state = _time_travel([CREATED, *[message("user", str(i)) for i in range(3)], draft("s", "b")])
    assert state is not None and [m["content"] for m in state["row"]["messages"] or []] == [
        "0",
        "1",
        "2",
    ]


def test_an_empty_batch_returns_the_given_state() -> None:
    start = apply_session(None, recorded([CREATED])[0])
    assert fold_session_events(start, []) is start
    assert fold_session_events(None, []) is None


def test_session_projection_identity() -> None:
    projection = SessionProjection()
    assert (projection.kind, projection.version, projection.snapshots) == ("session", 1, True)
    state = fold(projection, recorded([CREATED, claim("run_a")]))
    assert state is not None
    assert projection.index(state) == DocIndex(
        owner="u1", parent="c1", created_at=T(1), active=True, deleted=False
    )
    # a deleted session stays in the store (the tombstone, API.md), its index says deleted
    gone = fold(projection, recorded([CREATED, ("session.deleted", {})]))
    assert gone is not None
    assert projection.index(gone) == DocIndex(
        owner="u1", parent="c1", created_at=T(1), active=False, deleted=True
    )


#: API.md, PATCH: "Fields: messages, title, draft_subject, draft_body, skeleton,
#: skeleton_history, draft_history, framework_version, generated_examples, task_status"
#: and "explicit null writes null"
PATCH_TABLE: list[tuple[str, Any]] = [
    ("messages", [{"role": "user", "content": "hi"}]),
    ("title", "Q3 intro"),
    ("draft_subject", "Hello"),
    ("draft_body", "Body"),
    ("skeleton", A),
    ("skeleton_history", [{"framework_version": 1, "skeleton": B, "replaced_at": T(1)}]),
    ("draft_history", [{"draft_subject": "s", "draft_body": "b", "replaced_at": T(1)}]),
    ("framework_version", 7),
    ("generated_examples", [{"lead_id": "l1", "subject": "s", "body": "b"}]),
    ("task_status", "chat"),
]


@pytest.mark.parametrize(("field", "value"), PATCH_TABLE, ids=[f for f, _ in PATCH_TABLE])
def test_patch_writes_each_documented_field(field: str, value: Any) -> None:
    for folder in (_time_travel, lambda specs: fold(SessionProjection(), recorded(specs))):
        state = folder([CREATED, patch(**{field: value})])
        assert state is not None and state["row"][field] == value, field  # type: ignore[literal-required]
        cleared = folder([CREATED, patch(**{field: value}), patch(**{field: None})])
        assert cleared is not None and cleared["row"][field] is None  # type: ignore[literal-required]
        assert cleared["row"]["updated_at"] == T(3)


def test_patch_rules_the_mutants_found() -> None:
    for folder in (_time_travel, lambda specs: fold(SessionProjection(), recorded(specs))):
        # a draft with only a subject is still a draft: a revision keeps it in history
        state = folder([CREATED, patch(draft_subject="s0"), draft("s1", "b1")])
        assert state is not None
        assert state["row"]["draft_history"] == [
            {"draft_subject": "s0", "draft_body": None, "replaced_at": T(3)}
        ]
        # a patch without fields changes nothing but the time
        state = folder([CREATED, patch(title="t"), ("session.patched", {})])
        assert state is not None
        assert (state["row"]["title"], state["row"]["updated_at"]) == ("t", T(3))
    # a list this fold already extends, replaced by a PATCH: the PATCH's list is never changed
    given = [{"role": "user", "content": "patched"}]
    state = _time_travel(
        [CREATED, message("user", "a"), patch(messages=given), message("user", "b")]
    )
    assert given == [{"role": "user", "content": "patched"}]
    assert state is not None and [m["content"] for m in state["row"]["messages"] or []] == [
        "patched",
        "b",
    ]


# forks: docs/guides/history.md, "Fork and diff" -------------------------------------------

#: the source's row as the fork event carries it: content, and identity, status and
#: times of the source's own
SOURCE_ROW: dict[str, Any] = {
    "id": "s0",
    "user_id": "u0",
    "campaign_id": "c0",
    "node_id": "n0",
    "title": "Q3 intro",
    "messages": [{"role": "user", "content": "hi"}],
    "draft_subject": "Hello",
    "draft_body": "Body",
    "skeleton": A,
    "skeleton_history": [{"framework_version": 1, "skeleton": B, "replaced_at": "t0"}],
    "draft_history": [{"draft_subject": "s", "draft_body": "b", "replaced_at": "t0"}],
    "framework_version": 2,
    "generated_examples": [{"lead_id": "l1", "subject": "s", "body": "b"}],
    "task_status": "examples",
    "created_at": "t-source",
    "updated_at": "t-source",
}


def forked() -> Spec:
    return (
        "session.forked",
        {
            **CREATED[1],
            "row": copy.deepcopy(SOURCE_ROW),
            "forked_from": {"session_id": "s0", "position": 7, "note": "not kept"},
        },
    )


#: the fork's row, by hand: the source's content under the fork's own identity, idle,
#: created when it was forked, saying where it came from (session and position only)
FORK_ROW: dict[str, Any] = {
    **{k: SOURCE_ROW[k] for k in ("title", "messages", "draft_subject", "draft_body")},
    **{k: SOURCE_ROW[k] for k in ("skeleton", "skeleton_history", "draft_history")},
    "framework_version": 2,
    "generated_examples": SOURCE_ROW["generated_examples"],
    "id": SID,
    "user_id": "u1",
    "campaign_id": "c1",
    "node_id": "n1",
    "task_status": None,
    "created_at": T(1),
    "updated_at": T(1),
    "forked_from": {"session_id": "s0", "position": 7},
}


def test_a_fork_starts_with_the_sources_content_under_its_own_identity() -> None:
    events = recorded([forked()])
    by_apply = apply_session(None, events[0])
    for state in (by_apply, _time_travel([forked()]), fold(SessionProjection(), events)):
        assert state is not None
        assert state == {"row": FORK_ROW, "active_run": None, "deleted": False}


def test_a_fork_goes_on_like_any_session_and_never_changes_its_event() -> None:
    specs = [forked(), message("user", "again"), skeleton(C)]
    events = recorded(specs)
    for state in (fold_session_events(None, events), fold(SessionProjection(), events)):
        assert state is not None
        row = state["row"]
        assert row["messages"] == [*SOURCE_ROW["messages"], {"role": "user", "content": "again"}]
        assert (row["skeleton"], row["framework_version"]) == (C, 3)
        assert row["skeleton_history"] == [
            *SOURCE_ROW["skeleton_history"],
            {"framework_version": 2, "skeleton": A, "replaced_at": T(3)},
        ]
        assert row["forked_from"] == {"session_id": "s0", "position": 7}
        assert row["updated_at"] == T(3) and row["created_at"] == T(1)
    # the fold copied the row it was given: the log's event is as it was recorded
    assert events[0].data["row"] == SOURCE_ROW
    # a fork after events of a stream starts the row again, as a creation does
    state = _time_travel([CREATED, message("user", "old"), forked()])
    assert state is not None and state["row"] == {
        **FORK_ROW,
        "created_at": T(3),
        "updated_at": T(3),
    }
