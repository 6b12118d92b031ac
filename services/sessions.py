"""Application services: the commands and queries behind the handlers.

Every command is a check against the current read model followed by an
append with an expected version, so a concurrent change makes the append
fail instead of silently overwriting; a few commands retry that loop.
Ownership is checked here, once: another user's resource is ``NotFound``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sessionstream.core.errors import (
    ConcurrencyConflict,
    NotFound,
    PreconditionFailed,
    SessionBusy,
    ValidationFailed,
)
from sessionstream.core.vocabulary import EventType, campaign_stream, run_stream, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import AppendRequest, Doc, NewEvent
from sessionstream.projections.session import fold_session_events
from sessionstream.services.ownership import owned

IDEMPOTENCY_NS = uuid.UUID("6f1c0d2e-5b7a-4f43-9b52-8d7f4a1e2c90")
CLAIM_RETRIES = 20
#: session events read per query while folding for ``as_of``
AS_OF_PAGE = 5000


def idem_uuid(user_id: str, key: str | None, purpose: str) -> str | None:
    """A deterministic id for an ``Idempotency-Key``: a retry appends the same ids."""
    if key is None:
        return None
    return str(uuid.uuid5(IDEMPOTENCY_NS, f"{user_id}\x00{purpose}\x00{key}"))


def actor(user_id: str, request_id: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"actor": {"type": "user", "id": user_id}}
    if request_id:
        meta["request_id"] = request_id
    return meta


@dataclass(frozen=True, slots=True)
class Claim:
    run_id: str
    session_id: str
    user_id: str
    kind: str
    duplicate: bool


class Service:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    # campaigns ------------------------------------------------------------
    async def create_campaign(self, user_id: str, name: str, request_id: str | None) -> Doc:
        campaign_id = str(uuid.uuid4())
        await self.store.append(
            campaign_stream(campaign_id),
            [
                NewEvent(
                    EventType.CAMPAIGN_CREATED,
                    {"id": campaign_id, "user_id": user_id, "name": name},
                    actor(user_id, request_id),
                )
            ],
            expected_version=0,
        )
        return await self.campaign(user_id, campaign_id)

    async def campaign(self, user_id: str, campaign_id: str) -> Doc:
        return await owned(self.store, "campaign", campaign_id, user_id)

    async def campaigns(self, user_id: str) -> list[Doc]:
        return await self.store.list_docs("campaign", owner=user_id)

    async def delete_campaign(self, user_id: str, campaign_id: str, request_id: str | None) -> None:
        doc = await self.campaign(user_id, campaign_id)
        await self.store.append(
            campaign_stream(campaign_id),
            [NewEvent(EventType.CAMPAIGN_DELETED, {}, actor(user_id, request_id))],
            expected_version=doc.version,
        )

    async def add_node(
        self,
        user_id: str,
        campaign_id: str,
        name: str | None,
        position: int | None,
        request_id: str | None,
    ) -> dict[str, Any]:
        node_id = str(uuid.uuid4())
        for _ in range(CLAIM_RETRIES):
            doc = await self.campaign(user_id, campaign_id)
            pos = position if position is not None else len(doc.body["nodes"]) + 1
            try:
                await self.store.append(
                    campaign_stream(campaign_id),
                    [
                        NewEvent(
                            EventType.NODE_ADDED,
                            {"id": node_id, "name": name, "position": pos, "type": "ai"},
                            actor(user_id, request_id),
                        )
                    ],
                    expected_version=doc.version,
                )
            except ConcurrencyConflict:
                continue
            fresh = await self.campaign(user_id, campaign_id)
            return next(n for n in fresh.body["nodes"] if n["id"] == node_id)
        raise ConcurrencyConflict(campaign_stream(campaign_id), None, -1)

    # sessions ---------------------------------------------------------------
    async def session(self, user_id: str, session_id: str) -> Doc:
        return await owned(self.store, "session", session_id, user_id)

    async def sessions(self, user_id: str, campaign_id: str) -> list[Doc]:
        return await self.store.list_docs("session", owner=user_id, parent=campaign_id)

    async def create_session(
        self,
        user_id: str,
        campaign_id: str,
        node_id: str,
        *,
        request_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Doc:
        campaign = await self.campaign(user_id, campaign_id)
        if not any(n["id"] == node_id for n in campaign.body["nodes"]):
            raise NotFound(f"node {node_id} is not a sequence node of campaign {campaign_id}")
        session_id = idem_uuid(user_id, idempotency_key, "session") or str(uuid.uuid4())
        event_id = idem_uuid(user_id, idempotency_key, EventType.SESSION_CREATED)
        event = NewEvent(
            EventType.SESSION_CREATED,
            {"id": session_id, "user_id": user_id, "campaign_id": campaign_id, "node_id": node_id},
            actor(user_id, request_id),
            **({"event_id": event_id} if event_id else {}),
        )
        await self.store.append(session_stream(session_id), [event], expected_version=0)
        return await self.session(user_id, session_id)

    async def patch_session(
        self,
        user_id: str,
        session_id: str,
        fields: dict[str, Any],
        *,
        if_match: int | None = None,
        request_id: str | None = None,
    ) -> tuple[Doc, str | None]:
        """Returns the new row and, when the patch cleared ``task_status``, the run to cancel."""
        doc = await self.session(user_id, session_id)
        if if_match is not None and if_match != doc.version:
            raise PreconditionFailed(
                f"session is at version {doc.version}, not {if_match}: reload and retry"
            )
        expected = doc.version if if_match is not None else None
        cancel = (
            doc.body["active_run"]
            if "task_status" in fields and fields["task_status"] is None
            else None
        )
        try:
            await self.store.append(
                session_stream(session_id),
                [
                    NewEvent(
                        EventType.SESSION_PATCHED, {"fields": fields}, actor(user_id, request_id)
                    )
                ],
                expected_version=expected,
            )
        except ConcurrencyConflict as exc:
            raise PreconditionFailed("the session changed meanwhile: reload and retry") from exc
        return await self.session(user_id, session_id), cancel

    async def delete_session(
        self, user_id: str, session_id: str, request_id: str | None
    ) -> str | None:
        """Tombstones the session; returns the active run to cancel, if any."""
        doc = await self.session(user_id, session_id)
        await self.store.append(
            session_stream(session_id),
            [NewEvent(EventType.SESSION_DELETED, {}, actor(user_id, request_id))],
        )
        active: str | None = doc.body["active_run"]
        return active

    # claims -----------------------------------------------------------------------
    async def claim(
        self,
        user_id: str,
        session_id: str,
        *,
        kind: str,
        task_status: str,
        run_input: dict[str, Any],
        request_id: str | None = None,
        idempotency_key: str | None = None,
        precheck: Any = None,
    ) -> Claim:
        """Atomically mark the session busy and create the run stream, or raise SessionBusy."""
        purpose = f"{kind}:{session_id}"
        run_hex = idem_uuid(user_id, idempotency_key, f"run:{purpose}")
        run_id = "run_" + (uuid.UUID(run_hex).hex if run_hex else uuid.uuid4().hex)
        claim_id = idem_uuid(user_id, idempotency_key, f"claim:{purpose}")
        created_id = idem_uuid(user_id, idempotency_key, f"created:{purpose}")
        meta = actor(user_id, request_id)
        for _ in range(CLAIM_RETRIES):
            doc = await self.session(user_id, session_id)
            if precheck is not None:
                precheck(doc)
            busy = doc.body["row"]["task_status"] is not None
            if busy and doc.body["active_run"] != run_id:
                raise SessionBusy(
                    f"Session is busy ({doc.body['row']['task_status']}); "
                    "wait for task_status to return to null, then retry"
                )
            claim_event = NewEvent(
                EventType.RUN_CLAIMED,
                {"run_id": run_id, "kind": kind, "task_status": task_status},
                meta,
                **({"event_id": claim_id} if claim_id else {}),
            )
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
            try:
                results = await self.store.transact(
                    [
                        AppendRequest(session_stream(session_id), (claim_event,), doc.version),
                        AppendRequest(run_stream(run_id), (created,), 0),
                    ]
                )
            except ConcurrencyConflict:
                continue
            return Claim(run_id, session_id, user_id, kind, results[0].duplicate)
        raise SessionBusy("Session is busy: too many concurrent changes, retry")

    async def run(self, user_id: str, run_id: str) -> Doc:
        return await owned(self.store, "run", run_id, user_id)

    async def session_as_of(self, user_id: str, session_id: str, position: int) -> dict[str, Any]:
        """The session state exactly as it was at a global position (time travel).

        The owner may look back at a deleted session (auditors); the answer is
        ``NotFound`` where the session did not exist yet or was already deleted.
        At or past the last session event the current document is the answer;
        otherwise the newest snapshot at or before ``position`` plus the
        session events after it, so the cost is bounded by the snapshot
        interval, not by the history's length.
        """
        doc = await owned(self.store, "session", session_id, user_id, deleted=True)
        state: dict[str, Any] | None
        if position >= doc.position:
            state = doc.body
        else:
            state = await self._fold_until(session_stream(session_id), position)
        if state is None or state["deleted"]:
            raise NotFound(f"session {session_id} did not exist at position {position}")
        return state

    async def _fold_until(self, stream: str, position: int) -> dict[str, Any] | None:
        snap = await self.store.latest_snapshot(stream, "session", max_position=position)
        state: dict[str, Any] | None = None
        after = 0
        if snap is not None:
            after, _, state = snap
        while True:
            events = await self.store.read_stream(
                stream, after, limit=AS_OF_PAGE, to_position=position
            )
            state = fold_session(events, state)
            if len(events) < AS_OF_PAGE:
                return state
            after = events[-1].version


def check_no_examples_without_skeleton(doc: Doc) -> None:
    if doc.body["row"]["skeleton"] is None:
        raise ValidationFailed("Session has no framework yet. Chat first to create one.")


def fold_session(
    events: Sequence[Any], state: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    return fold_session_events(state, events)
