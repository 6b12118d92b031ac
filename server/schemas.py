"""Request and response schemas at the HTTP edge (pydantic v2).

These models are also the source of the OpenAPI document, so the contract
clients read and the validation the server applies cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from sessionstream.core.readmodels import JsonObject, RunKind, RunRow, RunStatus, TaskStatus

UUID_PATTERN = (
    r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-"
    r"[0-9a-fA-F]{12}|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff)$"
)
Uuid = Annotated[str, Field(pattern=UUID_PATTERN, json_schema_extra={"format": "uuid"})]
#: the same in a response: what a generated client may parse as a UUID
UuidOut = Annotated[str, Field(json_schema_extra={"format": "uuid"})]
#: RFC 3339 UTC, as every stored time is written (``2026-01-01T12:00:00.000000Z``)
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
SafeInt = Annotated[StrictInt, Field(ge=-9007199254740991, le=9007199254740991)]
#: the template variables a model may use; a turn and generate-examples bound them alike
#: (generate-examples once took 100,000 names, or one of 3,000,000 characters)
VarNames = Annotated[list[Annotated[StrictStr, Field(max_length=100)]], Field(max_length=200)]
#: the longest ``Idempotency-Key`` kept (the OpenAPI document declares it): a key is a
#: client's retry token, hashed into ids and never stored, but every header the API
#: reads is bounded by what it documents
MAX_IDEMPOTENCY_KEY = 255


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


def _non_empty(name: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"type": "string", "minLength": 1}}}


class ExampleLead(Lead):
    """A lead to write an example for: it needs a non-empty ``id`` or ``lead_id`` (the
    documented API accepts either), which the schema says so clients learn it up front."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"anyOf": [_non_empty("id"), _non_empty("lead_id")]},
    )


class SequenceContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    position: Annotated[StrictInt, Field(ge=0, le=9007199254740991)] | None = None
    total_nodes: Annotated[StrictInt, Field(ge=0, le=9007199254740991)] | None = None
    prior_nodes: list[dict[str, Any]] | None = None


class Message(BaseModel):
    """One chat message, ``{role, content}`` as the documented session row has it.

    A PATCH used to take any object here, which the row's documented shape (and every
    reader of it: the engines, ``replay``) does not; a client's other keys still ride along.
    """

    model_config = ConfigDict(extra="allow")

    role: StrictStr
    content: StrictStr


class Example(BaseModel):
    """One generated example, ``{lead_id, subject, body}``; other keys ride along."""

    model_config = ConfigDict(extra="allow")

    lead_id: StrictStr
    subject: StrictStr
    body: StrictStr


class CreateSession(BaseModel):
    campaign_id: Uuid
    node_id: Uuid


class PatchSession(BaseModel):
    """Only keys present are written; an explicit null writes null; unknown keys are 400."""

    model_config = ConfigDict(extra="forbid")

    messages: list[Message] | None = None
    title: StrictStr | None = None
    draft_subject: StrictStr | None = None
    draft_body: StrictStr | None = None
    skeleton: dict[str, Any] | None = None
    skeleton_history: list[dict[str, Any]] | None = None
    draft_history: list[dict[str, Any]] | None = None
    framework_version: SafeInt | None = None
    generated_examples: list[Example] | None = None
    task_status: TaskStatus | None = None


class TurnRequest(BaseModel):
    message: Annotated[StrictStr, Field(min_length=1)]
    availableVarNames: VarNames | None = None
    sampleLeads: list[Lead] | None = Field(default=None, max_length=100)
    sequenceContext: SequenceContext | None = None


class GenerateExamplesRequest(BaseModel):
    leads: Annotated[list[ExampleLead], Field(min_length=1)]
    sequenceContext: SequenceContext | None = None
    isFirstBatch: StrictBool | None = None
    availableVarNames: VarNames | None = None


class CreateCampaign(BaseModel):
    name: Annotated[StrictStr, Field(min_length=1, max_length=500)]


class CreateNode(BaseModel):
    name: Annotated[StrictStr, Field(max_length=500)] | None = None
    position: Annotated[StrictInt, Field(ge=1, le=10_000)] | None = None


class SkeletonRollback(BaseModel):
    framework_version: SafeInt


class ForkRequest(BaseModel):
    """Where to fork from: a log position or a version of the session's stream."""

    position: Annotated[StrictInt, Field(ge=1, le=9007199254740991)] | None = None
    version: Annotated[StrictInt, Field(ge=1, le=9007199254740991)] | None = None
    node_id: str | None = None


class DraftRollback(BaseModel):
    index: Annotated[StrictInt, Field(ge=0)]


# responses (documented shapes; used for the OpenAPI document) ---------------------


class ForkedFromOut(BaseModel):
    session_id: str
    position: int


class FieldChangeOut(BaseModel):
    field: str
    before: Any
    after: Any


class SessionDiffOut(BaseModel):
    """What changed between two versions: skeleton fields, unified diffs, messages added."""

    model_config = ConfigDict(populate_by_name=True)

    from_: int = Field(alias="from")
    to: int
    skeleton: list[FieldChangeOut]
    draft_subject: str
    draft_body: str
    messages_added: list[dict[str, Any]]


class InclusionProofOut(BaseModel):
    position: int
    leaf_index: int
    tree_size: int
    leaf_hash: str
    hashes: list[str]


class ConsistencyProofOut(BaseModel):
    first: int
    second: int
    hashes: list[str]


class SessionOut(BaseModel):
    id: UuidOut
    user_id: UuidOut
    campaign_id: UuidOut
    node_id: UuidOut
    title: str | None
    messages: list[Message] | None
    draft_subject: str | None
    draft_body: str | None
    skeleton: dict[str, Any] | None
    skeleton_history: list[dict[str, Any]] | None
    draft_history: list[dict[str, Any]] | None
    framework_version: int | None
    generated_examples: list[Example] | None
    task_status: TaskStatus | None
    created_at: Timestamp
    updated_at: Timestamp
    #: only on a fork: the source session and the log position it was copied at
    forked_from: ForkedFromOut | None = None


class SessionEnvelope(BaseModel):
    session: SessionOut


class SessionList(BaseModel):
    sessions: list[SessionOut]
    #: the ``after`` of the following page; null on the last page, absent without ``limit``
    next: str | None = None


class RunStarted(BaseModel):
    runId: str
    publicAccessToken: str


class RunProgressOut(BaseModel):
    done: int | None
    total: int | None


class TurnOutputOut(BaseModel):
    """What a completed turn did."""

    message: str
    skeleton_updated: bool
    framework_version: int
    draft_updated: bool


class ExamplesOutputOut(BaseModel):
    """What a completed example batch did; ``missing_variables``: lead id -> the
    template variables that lead could not fill."""

    examples: int
    missing_variables: dict[str, list[str]]


class RunOut(BaseModel):
    """A run, folded from its stream; ``seq`` is that stream's version."""

    id: Annotated[str, Field(pattern=r"^run_[0-9a-f]{32}$")]
    runId: Annotated[str, Field(pattern=r"^run_[0-9a-f]{32}$")]
    sessionId: UuidOut
    session_id: UuidOut | None = None
    user_id: UuidOut | None = None
    kind: RunKind
    status: RunStatus
    seq: int
    created_at: Timestamp
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    error: str | None = None
    progress: RunProgressOut | None = None
    output: TurnOutputOut | ExamplesOutputOut | None = None


class RunEnvelope(BaseModel):
    run: RunOut


class ActorOut(BaseModel):
    """Who appended an event: a user, a run, or the system (``id`` says which)."""

    type: str
    id: str


class EventOut(BaseModel):
    """One audit-log entry, with everything its hash covers."""

    position: int
    stream_id: str
    version: int
    type: str
    data: dict[str, Any]
    actor: ActorOut | str | None = None
    recorded_at: Timestamp
    hash: str
    event_id: UuidOut | None = None
    metadata: dict[str, Any] | None = None


class EventPage(BaseModel):
    events: list[EventOut]
    #: the position to pass as ``after`` for the next page, or null at the end
    next: Annotated[int, Field(ge=0)] | None


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
    """One audit-log entry but its ``data`` (spliced in as stored text): the event with
    everything its hash covers."""

    position: int
    stream_id: str
    version: int
    type: str
    actor: Any
    recorded_at: str
    hash: str
    event_id: str
    metadata: JsonObject


# their JSON schemas, for the OpenAPI document ----------------------------------------------
_NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
_UUID: dict[str, Any] = {"type": "string", "format": "uuid"}
_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}
CAMPAIGN_ITEM: dict[str, Any] = {
    "type": "object",
    "required": ["id", "user_id", "name", "created_at", "updated_at", "node_count"],
    "properties": {
        "id": _UUID,
        "user_id": _UUID,
        "name": {"type": "string"},
        "created_at": _TIME,
        "updated_at": _TIME,
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
        "id": _UUID,
        "campaign_id": _UUID,
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
