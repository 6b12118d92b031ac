"""Request and response schemas at the HTTP edge (pydantic v2).

These models are also the source of the OpenAPI document, so the contract
clients read and the validation the server applies cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from sessionstream.core.readmodels import JsonObject, RunRow, TaskStatus

UUID_PATTERN = (
    r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-"
    r"[0-9a-fA-F]{12}|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)$"
)
Uuid = Annotated[str, Field(pattern=UUID_PATTERN)]
SafeInt = Annotated[StrictInt, Field(ge=-9007199254740991, le=9007199254740991)]


class Lead(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: StrictStr | None = None
    lead_id: StrictStr | None = None
    first_name: StrictStr | None = None
    last_name: StrictStr | None = None
    full_name: StrictStr | None = None
    company: StrictStr | None = None
    position: StrictStr | None = None
    headline: StrictStr | None = None
    linkedin_url: StrictStr | None = None
    custom_fields: dict[str, Any] | None = None


class SequenceContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    position: Annotated[StrictInt, Field(ge=0, le=9007199254740991)] | None = None
    total_nodes: Annotated[StrictInt, Field(ge=0, le=9007199254740991)] | None = None
    prior_nodes: list[dict[str, Any]] | None = None


class CreateSession(BaseModel):
    campaign_id: Uuid
    node_id: Uuid


class PatchSession(BaseModel):
    """Only keys present are written; an explicit null writes null; unknown keys are 400."""

    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, Any]] | None = None
    title: StrictStr | None = None
    draft_subject: StrictStr | None = None
    draft_body: StrictStr | None = None
    skeleton: dict[str, Any] | None = None
    skeleton_history: list[dict[str, Any]] | None = None
    draft_history: list[dict[str, Any]] | None = None
    framework_version: SafeInt | None = None
    generated_examples: list[dict[str, Any]] | None = None
    task_status: TaskStatus | None = None


class TurnRequest(BaseModel):
    message: Annotated[StrictStr, Field(min_length=1)]
    availableVarNames: list[Annotated[StrictStr, Field(max_length=100)]] | None = Field(
        default=None, max_length=200
    )
    sampleLeads: list[Lead] | None = Field(default=None, max_length=100)
    sequenceContext: SequenceContext | None = None


class GenerateExamplesRequest(BaseModel):
    leads: Annotated[list[Lead], Field(min_length=1)]
    sequenceContext: SequenceContext | None = None
    isFirstBatch: StrictBool | None = None
    availableVarNames: list[StrictStr] | None = None


class CreateCampaign(BaseModel):
    name: Annotated[StrictStr, Field(min_length=1, max_length=500)]


class CreateNode(BaseModel):
    name: Annotated[StrictStr, Field(max_length=500)] | None = None
    position: Annotated[StrictInt, Field(ge=1, le=10_000)] | None = None


class SkeletonRollback(BaseModel):
    framework_version: SafeInt


class DraftRollback(BaseModel):
    index: Annotated[StrictInt, Field(ge=0)]


# responses (documented shapes; used for the OpenAPI document) ---------------------


class SessionOut(BaseModel):
    id: str
    user_id: str
    campaign_id: str
    node_id: str
    title: str | None
    messages: list[dict[str, Any]] | None
    draft_subject: str | None
    draft_body: str | None
    skeleton: dict[str, Any] | None
    skeleton_history: list[dict[str, Any]] | None
    draft_history: list[dict[str, Any]] | None
    framework_version: int | None
    generated_examples: list[dict[str, Any]] | None
    task_status: TaskStatus | None
    created_at: str
    updated_at: str


class SessionEnvelope(BaseModel):
    session: SessionOut


class SessionList(BaseModel):
    sessions: list[SessionOut]
    #: the ``after`` of the following page; null on the last page, absent without ``limit``
    next: str | None = None


class RunStarted(BaseModel):
    runId: str
    publicAccessToken: str


class Success(BaseModel):
    success: Literal[True]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


# responses built without pydantic (hot paths; the OpenAPI document spells them out) --------
class CampaignJson(TypedDict):
    id: str
    user_id: str
    name: str
    created_at: str
    updated_at: str
    node_count: int


class RunJson(RunRow):
    """The run row, its ids also in the camelCase the documented API uses."""

    runId: str
    sessionId: str


class EventJson(TypedDict):
    """One audit-log entry: the event with everything its hash covers."""

    position: int
    stream_id: str
    version: int
    type: str
    data: JsonObject
    actor: Any
    recorded_at: str
    hash: str
    event_id: str
    metadata: JsonObject


# their JSON schemas, for the OpenAPI document ----------------------------------------------
_NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
CAMPAIGN_ITEM: dict[str, Any] = {
    "type": "object",
    "required": ["id", "user_id", "name", "created_at", "updated_at", "node_count"],
    "properties": {
        "id": {"type": "string"},
        "user_id": {"type": "string"},
        "name": {"type": "string"},
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
        "node_count": {"type": "integer"},
    },
}
#: ``next``: the ``after`` of the following page; null on the last page, absent without ``limit``
NEXT: dict[str, Any] = {"type": ["string", "null"]}
PAGE_PARAMS: list[dict[str, Any]] = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "A page of at most this many items, with `next`; without it, every item",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "The opaque `next` of the previous page (400 if this list did not give it)",
        "schema": {"type": "string"},
    },
]
CAMPAIGN = {"type": "object", "required": ["campaign"], "properties": {"campaign": CAMPAIGN_ITEM}}
NODE_ITEM = {
    "type": "object",
    "required": ["id", "campaign_id", "position"],
    "properties": {
        "id": {"type": "string"},
        "campaign_id": {"type": "string"},
        "name": _NULLABLE_STR,
        "position": {"type": "integer"},
    },
}
NODE = {"type": "object", "required": ["node"], "properties": {"node": NODE_ITEM}}
NODES = {
    "type": "object",
    "required": ["nodes"],
    "properties": {"nodes": {"type": "array", "items": NODE_ITEM}, "next": NEXT},
}
CAMPAIGNS = {
    "type": "object",
    "required": ["campaigns"],
    "properties": {"campaigns": {"type": "array", "items": CAMPAIGN_ITEM}, "next": NEXT},
}
RUN = {
    "type": "object",
    "required": ["run"],
    "properties": {
        "run": {
            "type": "object",
            "required": ["id", "runId", "sessionId", "kind", "status", "seq", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "runId": {"type": "string"},
                "sessionId": {"type": "string"},
                "kind": {"enum": ["turn", "examples"]},
                "status": {"enum": ["queued", "running", "completed", "failed", "canceled"]},
                "seq": {"type": "integer"},
                "created_at": {"type": "string"},
                "error": _NULLABLE_STR,
            },
        }
    },
}


EVENTS = {
    "type": "object",
    "required": ["events", "next"],
    "properties": {
        "events": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["position", "stream_id", "version", "type", "data", "hash"],
                "properties": {
                    "position": {"type": "integer"},
                    "stream_id": {"type": "string"},
                    "version": {"type": "integer"},
                    "type": {"type": "string"},
                    "data": {"type": "object"},
                    "recorded_at": {"type": "string"},
                    "hash": {"type": "string"},
                },
            },
        },
        "next": {"type": ["integer", "null"]},
    },
}
