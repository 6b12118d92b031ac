"""The OpenAPI 3.1 document at ``/api/openapi.json``.

Built from the same pydantic models the handlers validate with, so the
document clients and the fuzzer read cannot drift from what the server does.
The pieces operations share are in ``server/openapi_parts.py``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from sessionstream.core.settings import Settings
from sessionstream.server import schemas
from sessionstream.server.keys import SETTINGS
from sessionstream.server.openapi_parts import (
    AS_OF,
    ERRORS,
    IDEMPOTENCY_KEY,
    IF_MATCH,
    MAX_POSITION,
    REF,
    RUN_ID_PARAM,
    SESSION_CHANGES,
    SESSION_ID,
    SESSION_OPS,
    SESSION_VERSION,
    UUID_PARAM,
    links,
    operation,
    query,
    ref,
)
from sessionstream.server.openapi_text import OPERATIONS, TAGS
from sessionstream.server.schemas import CAMPAIGN, CAMPAIGNS, NODE, NODES, PAGE_PARAMS, UUID_PATTERN

DOC = web.AppKey("openapi_document", dict)

MODELS: tuple[type[BaseModel], ...] = (
    schemas.CreateSession,
    schemas.PatchSession,
    schemas.TurnRequest,
    schemas.GenerateExamplesRequest,
    schemas.CreateCampaign,
    schemas.CreateNode,
    schemas.SkeletonRollback,
    schemas.DraftRollback,
    schemas.ForkRequest,
    schemas.SessionDiffOut,
    schemas.InclusionProofOut,
    schemas.ConsistencyProofOut,
    schemas.SessionEnvelope,
    schemas.SessionList,
    schemas.RunStarted,
    schemas.RunEnvelope,
    schemas.EventPage,
    schemas.Success,
    schemas.ErrorEnvelope,
)


def _limits(components: dict[str, Any], settings: Settings) -> None:
    """The configured limits the handlers enforce, so a client learns them up front."""
    message = components["TurnRequest"]["properties"]["message"]
    message["maxLength"] = settings.max_message_chars
    leads = components["GenerateExamplesRequest"]["properties"]["leads"]
    leads["maxItems"] = settings.max_leads
    # a PATCH's bounds hold at any depth (``server/bounds.py``); a schema states the top level
    for field in components["PatchSession"]["properties"].values():
        for variant in field.get("anyOf", [field]):
            if variant.get("type") == "array":
                variant["maxItems"] = settings.patch_max_items
            elif variant.get("type") == "string":
                variant["maxLength"] = variant.get("maxLength", settings.patch_max_chars)
            elif variant.get("type") == "object":
                variant["maxProperties"] = settings.patch_max_items


def _describe(paths: dict[str, Any]) -> None:
    """Tags and descriptions (``server/openapi_text.py``) on every operation."""
    for item in paths.values():
        for op in item.values():
            tag, description = OPERATIONS.get(op["operationId"], ("", ""))
            if tag:
                op["tags"] = [tag]
                op["description"] = description


#: a 1-based log position, version or tree size
POSITIVE = {"type": "integer", "minimum": 1}


def _starts_run(summary: str, body: type[BaseModel], op_id: str) -> dict[str, Any]:
    """A POST that claims the session and starts a run: busy is 409, a failed start 500."""
    return operation(
        summary,
        ref(schemas.RunStarted),
        body=body,
        params=[UUID_PARAM, IDEMPOTENCY_KEY],
        extra=("409", "500"),
        op_id=op_id,
        links=links(("getRun", "cancelRun"), {"path.run_id": "$response.body#/runId"}),
    )


def _rollback(summary: str, body: type[BaseModel], op_id: str) -> dict[str, Any]:
    """A POST that makes an earlier version current: based on a version (If-Match)."""
    return operation(
        summary,
        ref(schemas.SessionEnvelope),
        body=body,
        params=[UUID_PARAM, IF_MATCH],
        extra=("409", "412"),
        op_id=op_id,
    )


def build_document(settings: Settings) -> dict[str, Any]:
    components: dict[str, Any] = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template=REF)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    _limits(components, settings)
    sessions = "/api/campaigns/ai-chat-sessions"
    session = ref(schemas.SessionEnvelope)
    run_row = ref(schemas.RunEnvelope)
    campaign_param = {**UUID_PARAM}
    paths: dict[str, Any] = {
        sessions: {
            "get": operation(
                "List the caller's sessions of a campaign",
                ref(schemas.SessionList),
                op_id="listSessions",
                params=[
                    query(
                        "campaign_id", {"type": "string", "format": "uuid", "pattern": UUID_PATTERN}
                    ),
                    *PAGE_PARAMS,
                ],
            ),
            "post": operation(
                "Create an empty session",
                session,
                status="201",
                body=schemas.CreateSession,
                params=[IDEMPOTENCY_KEY],
                op_id="createSession",
                links={
                    **links(SESSION_OPS, SESSION_ID),
                    **links(SESSION_CHANGES, SESSION_VERSION),
                },
            ),
        },
        sessions + "/{id}": {
            "get": operation(
                "Get a session", session, params=[UUID_PARAM, AS_OF], op_id="getSession"
            ),
            "patch": operation(
                "Partially update a session",
                session,
                body=schemas.PatchSession,
                params=[UUID_PARAM, IF_MATCH],
                extra=("412",),
                op_id="patchSession",
            ),
            "delete": operation(
                "Delete a session",
                ref(schemas.Success),
                params=[UUID_PARAM],
                op_id="deleteSession",
            ),
        },
        sessions + "/{id}/turn": {
            "post": _starts_run("Run one chat turn", schemas.TurnRequest, "startTurn")
        },
        sessions + "/{id}/generate-examples": {
            "post": _starts_run(
                "Generate per-lead examples", schemas.GenerateExamplesRequest, "generateExamples"
            )
        },
        sessions + "/{id}/skeleton/rollback": {
            "post": _rollback(
                "Make an earlier skeleton current again",
                schemas.SkeletonRollback,
                "rollbackSkeleton",
            )
        },
        sessions + "/{id}/draft/rollback": {
            "post": _rollback(
                "Make an earlier draft current again", schemas.DraftRollback, "rollbackDraft"
            )
        },
        sessions + "/{id}/fork": {
            "post": operation(
                "Fork the session as it was at a log position or a version (a new session)",
                session,
                status="201",
                body=schemas.ForkRequest,
                params=[UUID_PARAM],
                op_id="forkSession",
                links=links(SESSION_OPS, SESSION_ID),
            )
        },
        sessions + "/{id}/diff": {
            "get": operation(
                "What changed between two versions of the session",
                ref(schemas.SessionDiffOut),
                op_id="sessionDiff",
                params=[
                    UUID_PARAM,
                    *(query(name, POSITIVE) for name in ("from", "to")),
                ],
            )
        },
        "/api/log/checkpoint": {
            "get": {
                "summary": "The newest signed checkpoint of the log (C2SP tlog-checkpoint)",
                "operationId": "logCheckpoint",
                "security": [{"bearer": []}],
                "responses": {
                    "200": {
                        "description": "A C2SP signed note: origin, size, root, signature",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **ERRORS,
                },
            }
        },
        "/api/log/inclusion": {
            "get": operation(
                "The inclusion proof of one of the caller's events (hashes only)",
                ref(schemas.InclusionProofOut),
                op_id="logInclusion",
                params=[
                    query("position", POSITIVE),
                    query("size", {"type": "integer", "minimum": 0}, required=False),
                ],
            )
        },
        "/api/log/consistency": {
            "get": operation(
                "A consistency proof between two tree sizes (RFC 9162 2.1.4)",
                ref(schemas.ConsistencyProofOut),
                op_id="logConsistency",
                params=[query(name, POSITIVE) for name in ("first", "second")],
            )
        },
        sessions + "/{id}/events": {
            "get": operation(
                "The session's events (audit log)",
                ref(schemas.EventPage),
                op_id="sessionEvents",
                params=[
                    UUID_PARAM,
                    query(
                        "after",
                        {"type": "integer", "minimum": 0, "maximum": MAX_POSITION},
                        required=None,
                        description="The log position to read after: a page's `next`",
                    ),
                    query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        required=None,
                        description="At most this many events (100 by default); a page also "
                        "ends before its stored JSON passes `SESSIONSTREAM_PAGE_BYTES` (one larger "
                        "event comes alone), so follow `next` until it is null",
                    ),
                ],
            )
        },
        "/api/campaigns": {
            "get": operation(
                "List campaigns", CAMPAIGNS, params=PAGE_PARAMS, op_id="listCampaigns"
            ),
            "post": operation(
                "Create a campaign",
                CAMPAIGN,
                status="201",
                body=schemas.CreateCampaign,
                op_id="createCampaign",
                links=links(
                    ("getCampaign", "listNodes", "addNode", "deleteCampaign"),
                    {"path.id": "$response.body#/campaign/id"},
                ),
            ),
        },
        "/api/campaigns/{id}": {
            "get": operation(
                "Get a campaign", CAMPAIGN, params=[campaign_param], op_id="getCampaign"
            ),
            "delete": operation(
                "Delete a campaign",
                ref(schemas.Success),
                params=[campaign_param],
                op_id="deleteCampaign",
            ),
        },
        "/api/campaigns/{id}/nodes": {
            "get": operation(
                "List a campaign's sequence nodes",
                NODES,
                params=[campaign_param, *PAGE_PARAMS],
                op_id="listNodes",
            ),
            "post": operation(
                "Add a sequence node",
                NODE,
                status="201",
                body=schemas.CreateNode,
                params=[campaign_param],
                op_id="addNode",
                links={
                    "CreateSession": {
                        "operationId": "createSession",
                        "requestBody": {
                            "campaign_id": "$response.body#/node/campaign_id",
                            "node_id": "$response.body#/node/id",
                        },
                    }
                },
            ),
        },
        "/api/runs/{run_id}": {
            "get": operation("A run's status", run_row, params=[RUN_ID_PARAM], op_id="getRun"),
        },
        "/api/runs/{run_id}/cancel": {
            "post": operation(
                "Cancel a run; frees its session",
                run_row,
                params=[RUN_ID_PARAM],
                op_id="cancelRun",
            ),
        },
    }
    _describe(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sessionstream",
            "version": "0.1.0",
            "description": "Event-sourced AI chat sessions with realtime streaming.",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": name, "description": text} for name, text in TAGS],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[DOC])


def install(app: web.Application) -> None:
    app[DOC] = build_document(app[SETTINGS])
    app.router.add_get("/api/openapi.json", openapi)
