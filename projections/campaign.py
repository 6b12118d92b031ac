"""Campaigns and their sequence nodes, folded from ``campaign-<id>`` streams."""

from __future__ import annotations

from sessionstream.core.readmodels import Campaign, Node
from sessionstream.core.vocabulary import CAMPAIGN_PREFIX, EventType
from sessionstream.eventstore.model import DocIndex, RecordedEvent
from sessionstream.projections.streams import PerStream

PREFIX = CAMPAIGN_PREFIX


def apply_campaign(state: Campaign | None, event: RecordedEvent) -> Campaign | None:
    data, at = event.data, event.recorded_at
    if event.type == EventType.CAMPAIGN_CREATED:
        return {
            "id": data["id"],
            "user_id": data["user_id"],
            "name": data["name"],
            "created_at": at,
            "updated_at": at,
            "nodes": [],
            "deleted": False,
        }
    if state is None:
        return None
    new = state.copy()
    new["updated_at"] = at
    if event.type == EventType.NODE_ADDED:
        node: Node = {
            "id": data["id"],
            "campaign_id": state["id"],
            "name": data.get("name"),
            "position": data["position"],
            "type": data.get("type", "ai"),
            "created_at": at,
        }
        new["nodes"] = [*state["nodes"], node]
    elif event.type == EventType.CAMPAIGN_DELETED:
        new["deleted"] = True
    else:
        return state
    return new


class CampaignProjection(PerStream[Campaign]):
    prefix = PREFIX
    kind = "campaign"
    version = 1

    def evolve(self, state: Campaign | None, event: RecordedEvent) -> Campaign | None:
        return apply_campaign(state, event)

    def columns(self, state: Campaign) -> DocIndex:
        return DocIndex(
            owner=state["user_id"], created_at=state["created_at"], deleted=state["deleted"]
        )
