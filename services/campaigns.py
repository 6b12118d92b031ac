"""Campaigns and their sequence nodes: the parents every session belongs to.

A campaign is its own stream; a node is an event on it. A node's default
position is "after the last one", which depends on the nodes already there,
so adding one is decided on the campaign as read and appended at that
version: two concurrent additions never get the same position.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

from sessionstream.core.ids import uuid7
from sessionstream.core.readmodels import Campaign, Node
from sessionstream.core.vocabulary import EventType, campaign_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import Doc, NewEvent
from sessionstream.services.decide import actor, decide_and_append
from sessionstream.services.ownership import Loaded, campaign_of, owned_campaign
from sessionstream.services.paging import Cursors, Listing, Page, Pager


def _body(doc: Doc) -> Campaign:
    return campaign_of(doc).body


class Campaigns:
    """Campaign and node commands and queries; another user's campaign is ``NotFound``."""

    def __init__(self, store: EventStore, cursors: Cursors | None = None) -> None:
        """``cursors`` signs list cursors; without one they hold for this process only."""
        self.store = store
        self.pager = Pager(store, cursors or Cursors(secrets.token_urlsafe(32)))

    async def create_campaign(
        self, user_id: str, name: str, request_id: str | None = None
    ) -> Loaded[Campaign]:
        campaign_id = uuid7()
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

    async def campaign(self, user_id: str, campaign_id: str) -> Loaded[Campaign]:
        return await owned_campaign(self.store, campaign_id, user_id)

    async def campaigns(self, user_id: str, limit: int, after: str | None = None) -> Page[Campaign]:
        """A page of the caller's campaigns, oldest first."""
        return await self.pager.page(Listing("campaign", user_id), limit, after, _body)

    def every_campaign(
        self, user_id: str, after: str | None = None
    ) -> AsyncIterator[list[Campaign]]:
        """All of them, a bounded chunk at a time."""
        return self.pager.chunks(Listing("campaign", user_id), after, _body)

    async def delete_campaign(
        self, user_id: str, campaign_id: str, request_id: str | None = None
    ) -> None:
        """A tombstone; a concurrent change to the campaign makes this a 409, not a retry."""
        await decide_and_append(
            self.store,
            campaign_stream(campaign_id),
            lambda: self.campaign(user_id, campaign_id),
            lambda _campaign: [
                NewEvent(EventType.CAMPAIGN_DELETED, {}, actor(user_id, request_id))
            ],
            attempts=1,
        )

    async def nodes(
        self, user_id: str, campaign_id: str, limit: int | None = None, after: str | None = None
    ) -> Page[Node]:
        """A page of a campaign's nodes in the order they were added (all of them without
        ``limit``); they live in the campaign's document, so a page is a slice of it."""
        nodes = (await self.campaign(user_id, campaign_id)).body["nodes"]
        listing = Listing("node", user_id, campaign_id)
        size = len(nodes) if limit is None else limit
        return self.pager.within(listing, nodes, size, after, lambda n: n["id"])

    async def add_node(
        self,
        user_id: str,
        campaign_id: str,
        name: str | None,
        position: int | None,
        request_id: str | None = None,
    ) -> Node:
        node_id = uuid7()

        def decide(campaign: Loaded[Campaign]) -> list[NewEvent]:
            at = position if position is not None else len(campaign.body["nodes"]) + 1
            return [
                NewEvent(
                    EventType.NODE_ADDED,
                    {"id": node_id, "name": name, "position": at, "type": "ai"},
                    actor(user_id, request_id),
                )
            ]

        await decide_and_append(
            self.store,
            campaign_stream(campaign_id),
            lambda: self.campaign(user_id, campaign_id),
            decide,
        )
        fresh = await self.campaign(user_id, campaign_id)
        return next(n for n in fresh.body["nodes"] if n["id"] == node_id)
