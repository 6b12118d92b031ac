"""The OpenAPI 3.1 document at ``/api/openapi.json``.

Built from the same pydantic models the handlers validate with, so the
document clients and the fuzzer read cannot drift from what the server does.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel

from sessionstream.core.settings import Settings
from sessionstream.server import schemas
from sessionstream.server.keys import SETTINGS
from sessionstream.server.openapi_text import OPERATIONS, TAGS
from sessionstream.server.schemas import (
    CAMPAIGN,
    CAMPAIGNS,
    MAX_IDEMPOTENCY_KEY,
    NODE,
    NODES,
    PAGE_PARAMS,
    UUID_PATTERN,
)

REF = "#/components/schemas/{model}"
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


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_ref(schemas.ErrorEnvelope))}


ERRORS = {
    "400": _error("Malformed JSON, wrong types, unknown fields or bad UUIDs"),
    "401": _error("Missing or invalid bearer token"),
    "404": _error("Unknown resource, or another user's"),
    "413": _error(
        "Body larger than the limit (`payload_too_large`), or a write past the user's "
        "storage quota (`quota_exceeded`); nothing was written"
    ),
    "429": _error("Rate limited; see Retry-After"),
    "503": _error("Storage unavailable or overloaded; nothing was written (see Retry-After)"),
}
UUID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
}
RUN_ID_PARAM = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^run_[0-9a-f]{32}$"},
}
#: the highest log position a cursor may name (a signed 64-bit column, checked by the handler)
MAX_POSITION = 10**18 - 1
ETAG = {
    "ETag": {
        "description": "The session's version, to send back as If-Match",
        "schema": {"type": "string"},
    }
}
IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": "The session version (its ETag) the change is based on",
    "schema": {"type": "string"},
}
#: on every operation that starts something: a retry with the same key answers the first
#: response again (``services/claims.py``, ``services/sessions.py``)
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Any string of the client's: a retry with the same key returns the first "
    "response and starts nothing new",
    "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY},
}
AS_OF = {
    "name": "as_of",
    "in": "query",
    "required": False,
    "description": "A log position or an RFC 3339 time: the session as it was then",
    "schema": {"type": "string"},
}


def _links(op_ids: tuple[str, ...], parameters: dict[str, str]) -> dict[str, Any]:
    """OpenAPI links: how a response's ids feed the next calls (clients, stateful fuzzing)."""
    return {
        op_id[0].upper() + op_id[1:]: {"operationId": op_id, "parameters": parameters}
        for op_id in op_ids
    }


SESSION_ID = {"path.id": "$response.body#/session/id"}
SESSION_OPS = ("getSession", "startTurn", "generateExamples", "deleteSession", "sessionEvents")
#: changes that may send the version they are based on: the ETag of the response
SESSION_CHANGES = ("patchSession", "rollbackSkeleton", "rollbackDraft")
SESSION_VERSION = {**SESSION_ID, "header.If-Match": "$response.header.ETag"}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    status: str = "200",
    body: type[BaseModel] | None = None,
    params: list[dict[str, Any]] | None = None,
    extra: tuple[str, ...] = (),
    op_id: str | None = None,
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    success: dict[str, Any] = {"description": "OK", "content": _json(ok)}
    if ok == _ref(schemas.SessionEnvelope):
        success["headers"] = ETAG
    if links:
        success["links"] = links
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {status: success, **ERRORS},
    }
    if op_id:
        op["operationId"] = op_id
    for code in extra:
        op["responses"][code] = _error(
            {
                "409": "Session busy",
                "412": "Stale If-Match",
                "500": "The run could not be started; the claim was released, so the "
                "session can be retried",
            }.get(code, "Error")
        )
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(_ref(body))}
    if params:
        op["parameters"] = params
    return op


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


def build_document(settings: Settings) -> dict[str, Any]:
    components: dict[str, Any] = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template=REF)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    _limits(components, settings)
    sessions = "/api/campaigns/ai-chat-sessions"
    session = _ref(schemas.SessionEnvelope)
    run = _ref(schemas.RunStarted)
    run_row = _ref(schemas.RunEnvelope)
    campaign_param = {**UUID_PARAM}
    paths: dict[str, Any] = {
        sessions: {
            "get": _op(
                "List the caller's sessions of a campaign",
                _ref(schemas.SessionList),
                op_id="listSessions",
                params=[
                    {
                        "name": "campaign_id",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
                    },
                    *PAGE_PARAMS,
                ],
            ),
            "post": _op(
                "Create an empty session",
                session,
                status="201",
                body=schemas.CreateSession,
                params=[IDEMPOTENCY_KEY],
                op_id="createSession",
                links={
                    **_links(SESSION_OPS, SESSION_ID),
                    **_links(SESSION_CHANGES, SESSION_VERSION),
                },
            ),
        },
        sessions + "/{id}": {
            "get": _op("Get a session", session, params=[UUID_PARAM, AS_OF], op_id="getSession"),
            "patch": _op(
                "Partially update a session",
                session,
                body=schemas.PatchSession,
                params=[UUID_PARAM, IF_MATCH],
                extra=("412",),
                op_id="patchSession",
            ),
            "delete": _op(
                "Delete a session",
                _ref(schemas.Success),
                params=[UUID_PARAM],
                op_id="deleteSession",
            ),
        },
        sessions + "/{id}/turn": {
            "post": _op(
                "Run one chat turn",
                run,
                body=schemas.TurnRequest,
                params=[UUID_PARAM, IDEMPOTENCY_KEY],
                extra=("409", "500"),
                op_id="startTurn",
                links=_links(("getRun", "cancelRun"), {"path.run_id": "$response.body#/runId"}),
            )
        },
        sessions + "/{id}/generate-examples": {
            "post": _op(
                "Generate per-lead examples",
                run,
                body=schemas.GenerateExamplesRequest,
                params=[UUID_PARAM, IDEMPOTENCY_KEY],
                extra=("409", "500"),
                op_id="generateExamples",
                links=_links(("getRun", "cancelRun"), {"path.run_id": "$response.body#/runId"}),
            )
        },
        sessions + "/{id}/skeleton/rollback": {
            "post": _op(
                "Make an earlier skeleton current again",
                session,
                body=schemas.SkeletonRollback,
                params=[UUID_PARAM, IF_MATCH],
                extra=("409", "412"),
                op_id="rollbackSkeleton",
            )
        },
        sessions + "/{id}/draft/rollback": {
            "post": _op(
                "Make an earlier draft current again",
                session,
                body=schemas.DraftRollback,
                params=[UUID_PARAM, IF_MATCH],
                extra=("409", "412"),
                op_id="rollbackDraft",
            )
        },
        sessions + "/{id}/fork": {
            "post": _op(
                "Fork the session as it was at a log position or a version (a new session)",
                session,
                status="201",
                body=schemas.ForkRequest,
                params=[UUID_PARAM],
                op_id="forkSession",
                links=_links(SESSION_OPS, SESSION_ID),
            )
        },
        sessions + "/{id}/diff": {
            "get": _op(
                "What changed between two versions of the session",
                _ref(schemas.SessionDiffOut),
                op_id="sessionDiff",
                params=[
                    UUID_PARAM,
                    *(
                        {
                            "name": name,
                            "in": "query",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1},
                        }
                        for name in ("from", "to")
                    ),
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
            "get": _op(
                "The inclusion proof of one of the caller's events (hashes only)",
                _ref(schemas.InclusionProofOut),
                op_id="logInclusion",
                params=[
                    {
                        "name": "position",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1},
                    },
                    {
                        "name": "size",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
            )
        },
        "/api/log/consistency": {
            "get": _op(
                "A consistency proof between two tree sizes (RFC 9162 2.1.4)",
                _ref(schemas.ConsistencyProofOut),
                op_id="logConsistency",
                params=[
                    {
                        "name": name,
                        "in": "query",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 1},
                    }
                    for name in ("first", "second")
                ],
            )
        },
        sessions + "/{id}/events": {
            "get": _op(
                "The session's events (audit log)",
                _ref(schemas.EventPage),
                op_id="sessionEvents",
                params=[
                    UUID_PARAM,
                    {
                        "name": "after",
                        "in": "query",
                        "description": "The log position to read after: a page's `next`",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_POSITION},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "At most this many events (100 by default); a page also "
                        "ends before its stored JSON passes `SESSIONSTREAM_PAGE_BYTES` (one larger "
                        "event comes alone), so follow `next` until it is null",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                ],
            )
        },
        "/api/campaigns": {
            "get": _op("List campaigns", CAMPAIGNS, params=PAGE_PARAMS, op_id="listCampaigns"),
            "post": _op(
                "Create a campaign",
                CAMPAIGN,
                status="201",
                body=schemas.CreateCampaign,
                op_id="createCampaign",
                links=_links(
                    ("getCampaign", "listNodes", "addNode", "deleteCampaign"),
                    {"path.id": "$response.body#/campaign/id"},
                ),
            ),
        },
        "/api/campaigns/{id}": {
            "get": _op("Get a campaign", CAMPAIGN, params=[campaign_param], op_id="getCampaign"),
            "delete": _op(
                "Delete a campaign",
                _ref(schemas.Success),
                params=[campaign_param],
                op_id="deleteCampaign",
            ),
        },
        "/api/campaigns/{id}/nodes": {
            "get": _op(
                "List a campaign's sequence nodes",
                NODES,
                params=[campaign_param, *PAGE_PARAMS],
                op_id="listNodes",
            ),
            "post": _op(
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
            "get": _op("A run's status", run_row, params=[RUN_ID_PARAM], op_id="getRun"),
        },
        "/api/runs/{run_id}/cancel": {
            "post": _op(
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
