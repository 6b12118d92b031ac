"""Forking a session: a new session that starts as another one was at a point of its history.

Developers roll back as a new revision of the same session; a fork keeps
both directions: the source is never touched (not even its version moves),
and the fork starts with one ``session.forked`` event carrying the source's
content as of the point, so its own stream folds alone and its history says
where it came from (``forked_from`` in its row).

The point is a log position or a version of the source's stream; the
content is the source's ``as_of`` there (``services/history.py``), which only
reads, so a run in progress on the source neither blocks a fork nor leaks
into it: the fork starts idle.
"""

from __future__ import annotations

from sessionstream.core.errors import NotFound, ValidationFailed
from sessionstream.core.ids import uuid7
from sessionstream.core.readmodels import SessionState
from sessionstream.core.vocabulary import EventType, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import AppendRequest, NewEvent
from sessionstream.projections.session import COPIED
from sessionstream.services.decide import actor
from sessionstream.services.history import History
from sessionstream.services.ownership import Loaded, owned_campaign, owned_session
from sessionstream.services.quota import Quota


async def fork_position(
    store: EventStore, session_id: str, position: int | None, version: int | None
) -> int:
    """The log position a fork copies: given, or the source stream's ``version``."""
    if (position is None) == (version is None):
        raise ValidationFailed("give exactly one of position or version")
    if version is not None:
        found = await store.position_of(session_stream(session_id), version)
        if found is None:
            raise NotFound(f"session {session_id} has no version {version}")
        return found
    assert position is not None
    if position < 1:
        raise ValidationFailed("position must be 1 or more")
    return position


async def fork_session(
    store: EventStore,
    user_id: str,
    session_id: str,
    *,
    position: int | None = None,
    version: int | None = None,
    node_id: str | None = None,
    request_id: str | None = None,
    quota: Quota | None = None,
) -> Loaded[SessionState]:
    """A new session of ``user_id`` equal to ``session_id`` as of the point (owner only).

    A fork copies the row, so it counts against the user's ``quota``."""
    at = await fork_position(store, session_id, position, version)
    source = await History(store).session_as_of(user_id, session_id, at)
    campaign_id = source.row["campaign_id"]
    node = node_id or source.row["node_id"]
    if node_id is not None:
        campaign = await owned_campaign(store, campaign_id, user_id)
        if not any(n["id"] == node_id for n in campaign.body["nodes"]):
            raise NotFound(f"node {node_id} is not a sequence node of campaign {campaign_id}")
    fork_id = uuid7()
    event = NewEvent(
        EventType.SESSION_FORKED,
        {
            "id": fork_id,
            "user_id": user_id,
            "campaign_id": campaign_id,
            "node_id": node,
            "row": {name: source.row.get(name) for name in COPIED},
            "forked_from": {"session_id": session_id, "position": source.position},
        },
        actor(user_id, request_id),
    )
    request = AppendRequest(session_stream(fork_id), (event,), 0)
    async with (quota or Quota(store, 0)).room(user_id) as room:
        room.check([request])
        await store.transact([request])
    return await owned_session(store, fork_id, user_id)
