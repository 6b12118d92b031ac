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
    #: only on a fork: the source session and the log position it was copied at
    forked_from: ForkedFromOut | None = None


class SessionEnvelope(BaseModel):
    session: SessionOut


class SessionList(BaseModel):
    sessions: list[SessionOut]


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
