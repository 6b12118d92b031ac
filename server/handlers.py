"""Thin handlers for the documented session API, campaigns, nodes and runs.

Each parses with a pydantic model, calls one service method and serialises
the result; errors are raised, never built here.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from sessionstream.core.errors import (
    NotFound,
    PreconditionFailed,
    SessionStreamError,
    ValidationFailed,
)
from sessionstream.eventstore.model import Doc
from sessionstream.server.errors import parse
from sessionstream.server.keys import (
    PRINCIPAL,
    REQUEST_ID,
    RUN_TOKENS,
    RUNS,
    SERVICE,
    SETTINGS,
    STORE,
)
from sessionstream.server.schemas import (
    UUID_PATTERN,
    CreateCampaign,
    CreateNode,
    CreateSession,
    GenerateExamplesRequest,
    PatchSession,
    TurnRequest,
)
from sessionstream.services.sessions import Claim, check_no_examples_without_skeleton

log = logging.getLogger("sessionstream.http")
routes = web.RouteTableDef()
_UUID = re.compile(UUID_PATTERN)
_RUN_ID = re.compile(r"^run_[0-9a-f]{32}$")
#: a log position in a signed 64-bit column
_POSITION = re.compile(r"^[0-9]{1,18}$")
SESSIONS = "/api/campaigns/ai-chat-sessions"


def user_id(request: web.Request) -> str:
    return request[PRINCIPAL].user_id


def request_id(request: web.Request) -> str | None:
    return request.get(REQUEST_ID)


def uuid_param(request: web.Request, name: str = "id") -> str:
    value = request.match_info[name]
    if not _UUID.match(value):
        raise ValidationFailed(f"{name} must be a UUID, got '{value[:64]}'")
    return value.lower()


def run_param(request: web.Request) -> str:
    value = request.match_info["run_id"]
    if not _RUN_ID.match(value):
        raise NotFound(f"run {value[:64]} not found")
    return value


def session_json(doc: Doc) -> dict[str, Any]:
    row: dict[str, Any] = doc.body["row"]
    return row


def etag(version: int) -> str:
    return f'"{version}"'


def if_match(request: web.Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip() == "*":
        return None
    value = raw.strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise PreconditionFailed(f"If-Match must be a session version (an ETag), got {raw!r}")
    return int(value)


def session_response(doc: Doc, status: int = 200) -> web.Response:
    body = doc.derived.get("session_response")
    if body is None:  # encoded once per version of the row, however often it is read
        body = doc.derived["session_response"] = json.dumps({"session": session_json(doc)}).encode()
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        charset="utf-8",  # as web.json_response spells it
        headers={"ETag": etag(doc.version)},
    )


# sessions -------------------------------------------------------------------------
@routes.get(SESSIONS)
async def list_sessions(request: web.Request) -> web.Response:
    campaign_id = request.query.get("campaign_id")
    if not campaign_id:
        raise ValidationFailed("campaign_id is required")
    if not _UUID.match(campaign_id):
        raise ValidationFailed("campaign_id must be a UUID")
    docs = await request.app[SERVICE].sessions(user_id(request), campaign_id.lower())
    return web.json_response({"sessions": [session_json(d) for d in docs]})


@routes.post(SESSIONS)
async def create_session(request: web.Request) -> web.Response:
    body, _ = await parse(request, CreateSession)
    doc = await request.app[SERVICE].create_session(
        user_id(request),
        body.campaign_id.lower(),
        body.node_id.lower(),
        request_id=request_id(request),
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    return session_response(doc, status=201)


@routes.get(SESSIONS + "/{id}")
async def get_session(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    service = request.app[SERVICE]
    as_of = request.query.get("as_of")
    if as_of is None:
        return session_response(await service.session(user_id(request), session_id))
    position = await _position(request, as_of)
    state = await service.session_as_of(user_id(request), session_id, position)
    return web.json_response({"session": state["row"], "as_of": position})


async def _position(request: web.Request, as_of: str) -> int:
    """``as_of`` is a global log position or an RFC 3339 time (its last position)."""
    if _POSITION.match(as_of):
        return int(as_of)
    try:
        moment = datetime.fromisoformat(as_of.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValidationFailed(
            "as_of must be a log position (0, 1, 2, ...) or an RFC 3339 time "
            "such as 2026-01-01T12:00:00Z"
        ) from exc
    if moment.tzinfo is None:
        raise ValidationFailed("as_of needs a time zone, e.g. 2026-01-01T12:00:00Z")
    try:
        stamp = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (OverflowError, ValueError) as exc:
        raise ValidationFailed("as_of is outside the representable time range") from exc
    return await request.app[STORE].position_at(stamp)


@routes.patch(SESSIONS + "/{id}")
async def patch_session(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    expected = if_match(request)
    body, _ = await parse(request, PatchSession)
    fields = body.model_dump(include=body.model_fields_set)
    service = request.app[SERVICE]
    if not fields:
        doc = await service.session(user_id(request), session_id)
        if expected is not None and expected != doc.version:
            raise PreconditionFailed(f"session is at version {doc.version}, not {expected}")
        return session_response(doc)
    doc, cancel = await service.patch_session(
        user_id(request), session_id, fields, if_match=expected, request_id=request_id(request)
    )
    if cancel is not None:
        await request.app[RUNS].cancel(cancel, "task_status cleared by PATCH")
        doc = await service.session(user_id(request), session_id)
    return session_response(doc)


@routes.delete(SESSIONS + "/{id}")
async def delete_session(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    active = await request.app[SERVICE].delete_session(
        user_id(request), session_id, request_id(request)
    )
    if active is not None:
        await request.app[RUNS].cancel(active, "session deleted")
    return web.json_response({"success": True})


async def _start(request: web.Request, claim: Claim, run_input: dict[str, Any]) -> web.Response:
    runs = request.app[RUNS]
    if not claim.duplicate:
        try:
            runs.start(claim, run_input)
        except Exception as exc:
            log.exception("could not start run %s", claim.run_id)
            await runs.release_failed_start(claim, f"the run could not start: {exc!r}")
            raise SessionStreamError("the run could not start; the session is free again") from exc
    token = request.app[RUN_TOKENS].mint(claim.run_id, claim.user_id)
    return web.json_response({"runId": claim.run_id, "publicAccessToken": token})


@routes.post(SESSIONS + "/{id}/turn")
async def turn(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    body, _raw = await parse(request, TurnRequest)
    settings = request.app[SETTINGS]
    if len(body.message) > settings.max_message_chars:
        raise ValidationFailed(f"message is longer than {settings.max_message_chars} characters")
    run_input = body.model_dump(exclude_none=True)
    request.app[RUNS].check_capacity()
    claim = await request.app[SERVICE].claim(
        user_id(request),
        session_id,
        kind="turn",
        task_status="chat_processing",
        run_input=run_input,
        request_id=request_id(request),
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    return await _start(request, claim, run_input)


@routes.post(SESSIONS + "/{id}/generate-examples")
async def generate_examples(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    body, _ = await parse(request, GenerateExamplesRequest)
    settings = request.app[SETTINGS]
    if len(body.leads) > settings.max_leads:
        raise ValidationFailed(f"too many leads: at most {settings.max_leads} per request")
    leads = []
    for index, lead in enumerate(body.leads):
        data = lead.model_dump(exclude_none=True)
        lead_id = data.pop("lead_id", None) or data.pop("id", None)
        if not lead_id:
            raise ValidationFailed(f"leads[{index}] needs an id (send 'id' or 'lead_id')")
        data["lead_id"] = lead_id
        leads.append(data)
    run_input: dict[str, Any] = {"leads": leads, "isFirstBatch": body.isFirstBatch is not False}
    if body.sequenceContext is not None:
        run_input["sequenceContext"] = body.sequenceContext.model_dump(exclude_none=True)
    if body.availableVarNames is not None:
        run_input["availableVarNames"] = body.availableVarNames
    request.app[RUNS].check_capacity()
    claim = await request.app[SERVICE].claim(
        user_id(request),
        session_id,
        kind="examples",
        task_status="generating_examples",
        run_input=run_input,
        request_id=request_id(request),
        idempotency_key=request.headers.get("Idempotency-Key"),
        precheck=check_no_examples_without_skeleton,
    )
    return await _start(request, claim, run_input)


# runs -----------------------------------------------------------------------------
def run_json(doc: Doc) -> dict[str, Any]:
    body = dict(doc.body)
    body["runId"] = body["id"]
    body["sessionId"] = body["session_id"]
    return body


@routes.get("/api/runs/{run_id}")
async def get_run(request: web.Request) -> web.Response:
    doc = await request.app[SERVICE].run(user_id(request), run_param(request))
    return web.json_response({"run": run_json(doc)})


@routes.post("/api/runs/{run_id}/cancel")
async def cancel_run(request: web.Request) -> web.Response:
    run_id = run_param(request)
    service = request.app[SERVICE]
    await service.run(user_id(request), run_id)
    await request.app[RUNS].cancel(run_id, "canceled by the owner")
    return web.json_response({"run": run_json(await service.run(user_id(request), run_id))})


# campaigns and nodes ----------------------------------------------------------------
def campaign_json(doc: Doc) -> dict[str, Any]:
    body = {k: v for k, v in doc.body.items() if k not in ("deleted", "nodes")}
    body["node_count"] = len(doc.body["nodes"])
    return body


@routes.post("/api/campaigns")
async def create_campaign(request: web.Request) -> web.Response:
    body, _ = await parse(request, CreateCampaign)
    doc = await request.app[SERVICE].create_campaign(
        user_id(request), body.name, request_id(request)
    )
    return web.json_response({"campaign": campaign_json(doc)}, status=201)


@routes.get("/api/campaigns")
async def list_campaigns(request: web.Request) -> web.Response:
    docs = await request.app[SERVICE].campaigns(user_id(request))
    return web.json_response({"campaigns": [campaign_json(d) for d in docs]})


@routes.get("/api/campaigns/{id}")
async def get_campaign(request: web.Request) -> web.Response:
    doc = await request.app[SERVICE].campaign(user_id(request), uuid_param(request))
    return web.json_response({"campaign": campaign_json(doc)})


@routes.delete("/api/campaigns/{id}")
async def delete_campaign(request: web.Request) -> web.Response:
    await request.app[SERVICE].delete_campaign(
        user_id(request), uuid_param(request), request_id(request)
    )
    return web.json_response({"success": True})


@routes.post("/api/campaigns/{id}/nodes")
async def create_node(request: web.Request) -> web.Response:
    campaign_id = uuid_param(request)
    body, _ = await parse(request, CreateNode)
    node = await request.app[SERVICE].add_node(
        user_id(request), campaign_id, body.name, body.position, request_id(request)
    )
    return web.json_response({"node": node}, status=201)


@routes.get("/api/campaigns/{id}/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    doc = await request.app[SERVICE].campaign(user_id(request), uuid_param(request))
    return web.json_response({"nodes": doc.body["nodes"]})
