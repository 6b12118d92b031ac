"""The claim: a session is busy while one run works on it, and only one.

``POST .../turn`` and ``POST .../generate-examples`` claim the session by
appending ``run.claimed`` at the version they read, in the same transaction
that creates the run's stream; of two concurrent claims one fails its
append, reads the now busy session and gets ``SessionBusy`` (409). The run
releases the claim with its terminal event. Rollbacks refuse a busy session
by the same rule.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sessionstream.core.errors import SessionBusy, ValidationFailed
from sessionstream.core.ids import uuid7_hex
from sessionstream.core.readmodels import RunInput, RunKind, SessionRow, SessionState, TaskStatus
from sessionstream.core.vocabulary import EventType, run_stream, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import AppendRequest, NewEvent
from sessionstream.services.decide import actor, decide_and_append, idem_uuid
from sessionstream.services.ownership import Loaded, owned_session
from sessionstream.services.quota import Room

#: the ``task_status`` a session shows while a run of each kind holds it
TASK_STATUS: Final[dict[RunKind, TaskStatus]] = {
    "turn": "chat_processing",
    "examples": "generating_examples",
}


@dataclass(frozen=True, slots=True)
class Claim:
    run_id: str
    session_id: str
    user_id: str
    kind: RunKind
    #: an ``Idempotency-Key`` retry of a claim already made: its run is already started
    duplicate: bool


def require_idle(row: SessionRow) -> None:
    if row["task_status"] is not None:
        raise SessionBusy(
            f"Session is busy ({row['task_status']}); "
            "wait for task_status to return to null, then retry"
        )


def require_skeleton(row: SessionRow) -> None:
    """Examples are written from the session's framework: there must be one."""
    if row["skeleton"] is None:
        raise ValidationFailed("Session has no framework yet. Chat first to create one.")


async def claim_session(
    store: EventStore,
    user_id: str,
    session_id: str,
    *,
    kind: RunKind,
    run_input: RunInput,
    request_id: str | None = None,
    idempotency_key: str | None = None,
    precheck: Callable[[SessionRow], None] | None = None,
    room: Room | None = None,
) -> Claim:
    """Atomically mark the session busy and create the run stream, or raise SessionBusy.

    With an ``Idempotency-Key`` the run id and both events' ids are derived
    from it, so a retry finds its own claim (not a busy session) and appends
    nothing new.
    """
    purpose = f"{kind}:{session_id}"
    run_hex = idem_uuid(user_id, idempotency_key, f"run:{purpose}")
    run_id = "run_" + (uuid.UUID(run_hex).hex if run_hex else uuid7_hex())
    claim_id = idem_uuid(user_id, idempotency_key, f"claim:{purpose}")
    created_id = idem_uuid(user_id, idempotency_key, f"created:{purpose}")
    meta = actor(user_id, request_id)
    created = NewEvent(
        EventType.RUN_CREATED,
        {
            "run_id": run_id,
            "kind": kind,
            "session_id": session_id,
            "user_id": user_id,
            "input": run_input,
        },
        {**meta, "session_id": session_id},
        correlation_id=session_stream(session_id),
        **({"event_id": created_id} if created_id else {}),
    )

    def decide(session: Loaded[SessionState]) -> list[NewEvent]:
        row = session.body["row"]
        if precheck is not None:
            precheck(row)
        if session.body["active_run"] != run_id:  # not our own claim, retried
            require_idle(row)
        return [
            NewEvent(
                EventType.RUN_CLAIMED,
                {"run_id": run_id, "kind": kind, "task_status": TASK_STATUS[kind]},
                meta,
                **({"event_id": claim_id} if claim_id else {}),
            )
        ]

    decided = await decide_and_append(
        store,
        session_stream(session_id),
        lambda: owned_session(store, session_id, user_id),
        decide,
        also=lambda _session: [AppendRequest(run_stream(run_id), (created,), 0)],
        exhausted=lambda _conflict: SessionBusy(
            "Session is busy: too many concurrent changes, retry"
        ),
        room=room,
    )
    assert decided.appended is not None  # a claim always appends
    return Claim(run_id, session_id, user_id, kind, decided.appended.duplicate)
