"""Sessions: the documented session API's commands, each whole.

A command here does everything its request means: checks ownership (another
user's session is ``NotFound``), decides on the current read model, appends,
and carries out what follows from it, such as canceling the run a PATCH or a
delete took the session from, or starting the run a turn claimed and minting
its ``publicAccessToken``. The HTTP handlers only parse and serialise.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sessionstream.core.errors import NotFound, SessionStreamError
from sessionstream.core.ids import uuid7
from sessionstream.core.readmodels import (
    ExamplesRunInput,
    JsonObject,
    RunInput,
    RunKind,
    RunRow,
    SessionRow,
    SessionState,
    TurnRunInput,
)
from sessionstream.core.vocabulary import EventType, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import AppendRequest, AppendResult, Doc, NewEvent
from sessionstream.services.accounts import RunTokens
from sessionstream.services.claims import Claim, claim_session, require_skeleton
from sessionstream.services.decide import actor, decide_and_append, idem_uuid
from sessionstream.services.ownership import (
    Loaded,
    owned_campaign,
    owned_run,
    owned_session,
    session_of,
)
from sessionstream.services.paging import Cursors, Listing, Page, Pager
from sessionstream.services.quota import Quota
from sessionstream.services.runs import RunManager

log = logging.getLogger("sessionstream.runs")


@dataclass(frozen=True, slots=True)
class StartedRun:
    """A run on its way, and the token that lets a browser watch it."""

    run_id: str
    public_access_token: str


def _sessions(user_id: str, campaign_id: str) -> Listing:
    return Listing("session", user_id, campaign_id)


def _row(doc: Doc) -> SessionRow:
    return session_of(doc).body["row"]


class Sessions:
    """The session commands and queries; runs are started and canceled through ``runs``."""

    def __init__(
        self,
        store: EventStore,
        runs: RunManager,
        tokens: RunTokens,
        cursors: Cursors | None = None,
        quota: Quota | None = None,
    ) -> None:
        """``cursors`` signs list cursors; without one they hold for this process only.
        Without a ``quota`` nothing is limited."""
        self.store = store
        self.quota = quota or Quota(store, 0)
        self.runs = runs
        self.tokens = tokens
        self.pager = Pager(store, cursors or Cursors(secrets.token_urlsafe(32)))

    # queries ------------------------------------------------------------------------------
    async def session(self, user_id: str, session_id: str) -> Loaded[SessionState]:
        return await owned_session(self.store, session_id, user_id)

    async def sessions(
        self, user_id: str, campaign_id: str, limit: int, after: str | None = None
    ) -> Page[SessionRow]:
        """A page of the caller's sessions of a campaign, oldest first."""
        return await self.pager.page(_sessions(user_id, campaign_id), limit, after, _row)

    def every_session(
        self, user_id: str, campaign_id: str, after: str | None = None
    ) -> AsyncIterator[list[SessionRow]]:
        """All of them (the documented list without ``limit``), a bounded chunk at a time."""
        return self.pager.chunks(_sessions(user_id, campaign_id), after, _row)

    async def run(self, user_id: str, run_id: str) -> RunRow:
        return (await owned_run(self.store, run_id, user_id)).body

    # commands -----------------------------------------------------------------------------
    async def create_session(
        self,
        user_id: str,
        campaign_id: str,
        node_id: str,
        *,
        request_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Loaded[SessionState]:
        campaign = await owned_campaign(self.store, campaign_id, user_id)
        if not any(n["id"] == node_id for n in campaign.body["nodes"]):
            raise NotFound(f"node {node_id} is not a sequence node of campaign {campaign_id}")
        session_id = idem_uuid(user_id, idempotency_key, "session") or uuid7()
        event_id = idem_uuid(user_id, idempotency_key, EventType.SESSION_CREATED)
        event = NewEvent(
            EventType.SESSION_CREATED,
            {"id": session_id, "user_id": user_id, "campaign_id": campaign_id, "node_id": node_id},
            actor(user_id, request_id),
            **({"event_id": event_id} if event_id else {}),
        )
        request = AppendRequest(session_stream(session_id), (event,), 0)
        async with self.quota.room(user_id) as room:
            room.check([request])
            (appended,) = await self.store.transact([request])
        return await self._written(appended, user_id, session_id)

    async def patch_session(
        self,
        user_id: str,
        session_id: str,
        fields: JsonObject,
        *,
        if_match: int | None = None,
        request_id: str | None = None,
    ) -> Loaded[SessionState]:
        """Write the fields present (an empty PATCH only checks ``If-Match``).

        Without ``If-Match`` the last writer wins; with it, a session that
        changed since the client's read is a 412 and nothing is written.
        Clearing ``task_status`` releases the session by hand: the run that
        held it is canceled.
        """

        def decide(_session: Loaded[SessionState]) -> list[NewEvent]:
            if not fields:
                return []
            return [
                NewEvent(EventType.SESSION_PATCHED, {"fields": fields}, actor(user_id, request_id))
            ]

        async with self.quota.room(user_id) as room:
            decided = await decide_and_append(
                self.store,
                session_stream(session_id),
                lambda: self.session(user_id, session_id),
                decide,
                if_match=if_match,
                last_writer_wins=True,
                attempts=1,
                room=room,
            )
        if decided.appended is None:
            return decided.state
        held_by = decided.state.body["active_run"]
        if "task_status" in fields and fields["task_status"] is None and held_by is not None:
            await self.runs.cancel(held_by, "task_status cleared by PATCH")
            return await self.session(user_id, session_id)  # the cancel wrote after us
        return await self._written(decided.appended, user_id, session_id)

    async def _written(
        self, appended: AppendResult, user_id: str, session_id: str
    ) -> Loaded[SessionState]:
        """The session as the append folded it; read back only after an idempotent retry
        (which folded nothing), through the ownership check a retry must pass again."""
        doc = appended.doc("session", session_id)
        if doc is None:
            return await self.session(user_id, session_id)
        return session_of(doc)

    async def delete_session(
        self, user_id: str, session_id: str, request_id: str | None = None
    ) -> None:
        """Tombstones the session (its history stays readable) and cancels its run."""
        decided = await decide_and_append(
            self.store,
            session_stream(session_id),
            lambda: self.session(user_id, session_id),
            lambda _session: [NewEvent(EventType.SESSION_DELETED, {}, actor(user_id, request_id))],
            last_writer_wins=True,
        )
        held_by = decided.state.body["active_run"]
        if held_by is not None:
            await self.runs.cancel(held_by, "session deleted")

    async def cancel_run(self, user_id: str, run_id: str) -> RunRow:
        """Cancel the caller's run; its terminal event frees the session."""
        await owned_run(self.store, run_id, user_id)
        await self.runs.cancel(run_id, "canceled by the owner")
        return await self.run(user_id, run_id)

    # runs -----------------------------------------------------------------------------------
    async def start_turn(
        self,
        user_id: str,
        session_id: str,
        ask: TurnRunInput,
        *,
        token_ref: str,
        request_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> StartedRun:
        return await self._claim_and_start(
            user_id, session_id, "turn", ask, token_ref, request_id, idempotency_key
        )

    async def start_examples(
        self,
        user_id: str,
        session_id: str,
        ask: ExamplesRunInput,
        *,
        token_ref: str,
        request_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> StartedRun:
        return await self._claim_and_start(
            user_id,
            session_id,
            "examples",
            ask,
            token_ref,
            request_id,
            idempotency_key,
            precheck=require_skeleton,
        )

    async def _claim_and_start(
        self,
        user_id: str,
        session_id: str,
        kind: RunKind,
        ask: RunInput,
        token_ref: str,
        request_id: str | None,
        idempotency_key: str | None,
        precheck: Callable[[SessionRow], None] | None = None,
    ) -> StartedRun:
        """Claim the session for a run of ``kind`` and start it.

        Capacity is checked before anything is written, and the claim is
        counted against the user's quota like any other write.
        """
        self.runs.check_capacity()
        async with self.quota.room(user_id) as room:
            claim = await claim_session(
                self.store,
                user_id,
                session_id,
                kind=kind,
                run_input=ask,
                request_id=request_id,
                idempotency_key=idempotency_key,
                precheck=precheck,
                room=room,
            )
        return await self._start(claim, ask, token_ref)

    async def _start(self, claim: Claim, ask: RunInput, token_ref: str) -> StartedRun:
        """Start the claimed run (a retried claim's run is already going) and mint its token.

        The token names the API token that asked (``token_ref``): revoking
        that one ends this one too.

        A run that cannot start gives its claim back before the error goes
        out, so the session is free to retry at once.
        """
        if not claim.duplicate:
            try:
                self.runs.start(claim, ask)
            except Exception as exc:
                log.exception("could not start run %s", claim.run_id)
                await self.runs.release_failed_start(claim, f"the run could not start: {exc!r}")
                raise SessionStreamError(
                    "the run could not start; the session is free again"
                ) from exc
        token = self.tokens.mint(claim.run_id, claim.user_id, token_ref=token_ref)
        return StartedRun(claim.run_id, token)
