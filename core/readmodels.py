"""The shapes of the read models, written once for every layer that reads them.

The store is schema-agnostic: a document's body is whatever its projection
folded, ``dict[str, Any]`` at the store's level. Above it everything knows
which kind of document it holds, so the projections build these shapes, the
services hand them out (cast once, where a document of a known kind is
loaded) and the handlers serialise them. A typo in a field name is then a
type error in every layer instead of a ``KeyError`` in one of them.

Only what a client writes is left as open JSON (:data:`JsonObject`): a PATCH
may put any object into ``messages``, ``skeleton``, the histories and
``generated_examples``, so readers of those check what they find.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypeAlias, TypedDict

#: a JSON object whose fields a client chose (a PATCH body, a lead, a skeleton)
JsonObject: TypeAlias = dict[str, Any]

TaskStatus = Literal["chat_processing", "generating_examples"]
RunKind = Literal["turn", "examples"]
RunStatus = Literal["queued", "running", "completed", "failed", "canceled"]


# sessions --------------------------------------------------------------------------------
class ForkedFrom(TypedDict):
    """Where a forked session started: the source and the log position it copied."""

    session_id: str
    position: int


class SessionFields(TypedDict):
    """The documented session row: what ``GET .../ai-chat-sessions/{id}`` answers.

    History entries keep the version they had: ``skeleton_history`` holds
    ``{"framework_version", "skeleton", "replaced_at"}`` and ``draft_history``
    ``{"draft_subject", "draft_body", "replaced_at"}``; a PATCH may replace
    either list with any objects.
    """

    id: str
    user_id: str
    campaign_id: str
    node_id: str
    title: str | None
    messages: list[JsonObject] | None
    draft_subject: str | None
    draft_body: str | None
    skeleton: JsonObject | None
    skeleton_history: list[JsonObject] | None
    draft_history: list[JsonObject] | None
    framework_version: int | None
    generated_examples: list[JsonObject] | None
    task_status: TaskStatus | None
    created_at: str
    updated_at: str


class SessionRow(SessionFields, total=False):
    """The row, and what only some rows carry (``total=False`` is what the runtime
    sees; ``NotRequired`` under postponed annotations is not)."""

    #: only on a session forked from another (``session.forked``)
    forked_from: ForkedFrom


class SessionState(TypedDict):
    """The session document: the row and what only the server needs to know."""

    row: SessionRow
    #: the run holding the session's claim (``task_status`` is set while it works)
    active_run: str | None
    #: a tombstone: the owner may still read the history of a deleted session
    deleted: bool


# runs --------------------------------------------------------------------------------------
class RunProgress(TypedDict):
    done: int | None
    total: int | None


class TurnOutput(TypedDict):
    message: str
    skeleton_updated: bool
    framework_version: int
    draft_updated: bool


class ExamplesOutput(TypedDict):
    examples: int
    #: lead id -> the template variables that lead could not fill
    missing_variables: dict[str, list[str]]


class RunRow(TypedDict):
    """One run, folded from its ``run-<id>`` stream; ``seq`` is that stream's version."""

    id: str
    kind: RunKind
    session_id: str
    user_id: str
    status: RunStatus
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    error: str | None
    seq: int
    progress: RunProgress | None
    output: TurnOutput | ExamplesOutput | None


class TurnRunInput(TypedDict):
    """What a turn was asked (``run.created``'s ``input``): the request's fields as sent."""

    message: str
    availableVarNames: NotRequired[list[str]]
    sampleLeads: NotRequired[list[JsonObject]]
    sequenceContext: NotRequired[JsonObject]


class ExamplesRunInput(TypedDict):
    """What an example batch was asked; every lead carries its ``lead_id``."""

    leads: list[JsonObject]
    isFirstBatch: bool
    sequenceContext: NotRequired[JsonObject]
    availableVarNames: NotRequired[list[str]]


RunInput = TurnRunInput | ExamplesRunInput


# campaigns ---------------------------------------------------------------------------------
class Node(TypedDict):
    """A sequence node of a campaign: what ``GET /api/campaigns/{id}/nodes`` lists."""

    id: str
    campaign_id: str
    name: str | None
    position: int
    type: str
    created_at: str


class Campaign(TypedDict):
    id: str
    user_id: str
    name: str
    created_at: str
    updated_at: str
    nodes: list[Node]
    deleted: bool


# accounts ----------------------------------------------------------------------------------
class User(TypedDict):
    id: str
    name: str
    created_at: str
    #: how many of the user's tokens are active
    tokens: int


class Usage(TypedDict):
    """What one user's requests have stored: the quota's measure (``projections/usage.py``)."""

    user_id: str
    #: UTF-8 bytes of the canonical JSON (data and metadata) of every event the user's
    #: requests appended; the log is append-only, so this never goes down
    bytes: int
    events: int


class Token(TypedDict):
    """An API token's document, keyed by the token's sha256 (the token is never stored)."""

    user_id: str
    issued_at: str
    revoked: bool
