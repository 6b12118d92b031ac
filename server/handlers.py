"""Thin handlers for the documented session API, campaigns, nodes and runs.

Each parses (path, headers, query, then the body with a pydantic model),
makes one call to an application service and serialises what it returns;
errors are raised, never built here.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from aiohttp import web

from sessionstream.core.errors import NotFound, PreconditionFailed, ValidationFailed
from sessionstream.core.jsonenc import encoder
from sessionstream.core.readmodels import (
    Campaign,
    ExamplesRunInput,
    JsonObject,
    RunRow,
    SessionState,
    TurnRunInput,
)
from sessionstream.core.settings import Settings
from sessionstream.server.bounds import Bounds
from sessionstream.server.errors import parse
from sessionstream.server.keys import CAMPAIGNS, HISTORY, PRINCIPAL, REQUEST_ID, SESSIONS, SETTINGS
from sessionstream.server.numbers import is_natural, natural
from sessionstream.server.schemas import (
    MAX_IDEMPOTENCY_KEY,
    UUID_PATTERN,
    CampaignJson,
    CreateCampaign,
    CreateNode,
    CreateSession,
    GenerateExamplesRequest,
    PatchSession,
    RunJson,
    TurnRequest,
)
from sessionstream.services.ownership import Loaded
from sessionstream.services.paging import MAX_LIMIT, Page
from sessionstream.services.sessions import StartedRun

T = TypeVar("T")

routes = web.RouteTableDef()
_UUID = re.compile(UUID_PATTERN)
#: ``json.dumps`` built once: a PATCH encodes a new row version every time
_dumps = encoder()
_RUN_ID = re.compile(r"^run_[0-9a-f]{32}$")
SESSIONS_PATH = "/api/campaigns/ai-chat-sessions"
#: a campaign is never the sessions collection: without the lookahead a method the
#: collection does not allow (DELETE) fell through to this route as campaign
#: "ai-chat-sessions" and answered 400 where 405 is right
CAMPAIGN_PATH = "/api/campaigns/{id:(?!ai-chat-sessions$)[^/]+}"


# parsing ----------------------------------------------------------------------------------
def user_id(request: web.Request) -> str:
    return request[PRINCIPAL].user_id


def request_id(request: web.Request) -> str | None:
    return request.get(REQUEST_ID)


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise ValidationFailed(
            f"Idempotency-Key is {len(key)} characters; at most {MAX_IDEMPOTENCY_KEY}"
        )
    return key


def uuid_param(request: web.Request, name: str = "id") -> str:
    value = request.match_info[name]
    if not _UUID.fullmatch(value):
        raise ValidationFailed(f"{name} must be a UUID, got '{value[:64]}'")
    return value.lower()


def run_param(request: web.Request) -> str:
    value = request.match_info["run_id"]
    if not _RUN_ID.fullmatch(value):
        raise NotFound(f"run {value[:64]} not found")
    return value


def campaign_query(request: web.Request) -> str:
    campaign_id = request.query.get("campaign_id")
    if not campaign_id:
        raise ValidationFailed("campaign_id is required")
    if not _UUID.fullmatch(campaign_id):
        raise ValidationFailed("campaign_id must be a UUID")
    return campaign_id.lower()


def if_match(request: web.Request) -> int | None:
    """The session version ``If-Match`` names; 412 for a tag that is not one of ours.

    A tag that is not a version (``"v7"``, ``"²"``, 19 digits) can never
    match, so it fails the precondition (RFC 9110, section 13.1.1) rather
    than being a malformed request.
    """
    raw = request.headers.get("If-Match")
    if raw is None or raw.strip(" \t") == "*":
        return None
    value = raw.strip(" \t").removeprefix("W/").strip('"')
    if not is_natural(value):
        raise PreconditionFailed(f"If-Match must be a session version (an ETag), got {raw[:40]!r}")
    return int(value)


def as_of_param(raw: str) -> int | datetime:
    """``as_of`` is a global log position or an RFC 3339 time with a zone."""
    if raw.strip(" \t").isascii() and raw.strip(" \t").isdigit():
        return natural(raw, "as_of")
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValidationFailed(
            "as_of must be a log position (0, 1, 2, ...) or an RFC 3339 time "
            "such as 2026-01-01T12:00:00Z"
        ) from exc
    if moment.tzinfo is None:
        raise ValidationFailed("as_of needs a time zone, e.g. 2026-01-01T12:00:00Z")
    return moment


def limit_query(request: web.Request) -> int | None:
    """``limit``: a page size from 1 to ``MAX_LIMIT``; absent, the whole list."""
    raw = request.query.get("limit")
    # present but blank is a 400, not "the whole list": a client that sent limit meant a page
    return None if raw is None else natural(raw, "limit", low=1, high=MAX_LIMIT)


def after_query(request: web.Request) -> str | None:
    """``after``: the ``next`` cursor of the previous page, opaque to the client."""
    return request.query.get("after") or None


def turn_ask(body: TurnRequest, settings: Settings) -> TurnRunInput:
    if len(body.message) > settings.max_message_chars:
        raise ValidationFailed(f"message is longer than {settings.max_message_chars} characters")
    # the model validated every field, so its dump is the run's input as typed
    return cast(TurnRunInput, body.model_dump(exclude_none=True))


def examples_ask(body: GenerateExamplesRequest, settings: Settings) -> ExamplesRunInput:
    """The batch as the run reads it: every lead with a ``lead_id`` (sent as it or as ``id``)."""
    if len(body.leads) > settings.max_leads:
        raise ValidationFailed(f"too many leads: at most {settings.max_leads} per request")
    leads: list[JsonObject] = []
    for index, lead in enumerate(body.leads):
        data = lead.model_dump(exclude_none=True)
        lead_id = data.pop("lead_id", None) or data.pop("id", None)
        if not lead_id:
            raise ValidationFailed(f"leads[{index}] needs an id (send 'id' or 'lead_id')")
        data["lead_id"] = lead_id
        leads.append(data)
    ask: ExamplesRunInput = {"leads": leads, "isFirstBatch": body.isFirstBatch is not False}
    if body.sequenceContext is not None:
        ask["sequenceContext"] = body.sequenceContext.model_dump(exclude_none=True)
    if body.availableVarNames is not None:
        ask["availableVarNames"] = body.availableVarNames
    return ask


# serialising -------------------------------------------------------------------------------
def etag(version: int) -> str:
    return f'"{version}"'


def session_response(session: Loaded[SessionState], status: int = 200) -> web.Response:
    doc = session.doc
    body = doc.derived.get("session_response")
    if body is None:  # encoded once per version of the row, however often it is read
        body = doc.derived["session_response"] = _dumps({"session": session.body["row"]}).encode()
    return web.Response(
        body=body,
        status=status,
        content_type="application/json",
        charset="utf-8",  # as web.json_response spells it
        headers={"ETag": etag(session.version)},
    )


def page_response(name: str, page: Page[T], item: Callable[[T], Any] | None = None) -> web.Response:
    items = page.items if item is None else [item(x) for x in page.items]
    return web.json_response({name: items, "next": page.next})


async def streamed_list(
    request: web.Request,
    name: str,
    chunks: AsyncIterator[list[T]],
    item: Callable[[T], Any] | None = None,
) -> web.StreamResponse:
    """``{name: [...]}`` written a chunk at a time, so a long list never sits in memory whole.

    The first chunk is read before the status goes out: an error there is
    still an ordinary error response.
    """
    chunk = await anext(chunks, None)
    response = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
    if rid := request_id(request):
        response.headers["X-Request-Id"] = rid
    await response.prepare(request)
    if request.method == "HEAD":  # the status and headers only: a body would corrupt the wire
        await response.write_eof()
        return response
    await response.write(b'{"' + name.encode() + b'":[')
    separator = b""
    while chunk is not None:
        encoded = ",".join(json.dumps(x if item is None else item(x)) for x in chunk)
        await response.write(separator + encoded.encode())
        separator = b","
        chunk = await anext(chunks, None)
    await response.write(b"]}")
    await response.write_eof()
    return response


def run_json(row: RunRow) -> RunJson:
    return {**row, "runId": row["id"], "sessionId": row["session_id"]}


def started_response(started: StartedRun) -> web.Response:
    return web.json_response(
        {"runId": started.run_id, "publicAccessToken": started.public_access_token}
    )


def campaign_json(campaign: Campaign) -> CampaignJson:
    return {
        "id": campaign["id"],
        "user_id": campaign["user_id"],
        "name": campaign["name"],
        "created_at": campaign["created_at"],
        "updated_at": campaign["updated_at"],
        "node_count": len(campaign["nodes"]),
    }


# sessions -------------------------------------------------------------------------------
@routes.get(SESSIONS_PATH)
async def list_sessions(request: web.Request) -> web.StreamResponse:
    user, campaign_id = user_id(request), campaign_query(request)
    limit, after = limit_query(request), after_query(request)
    if limit is None:
        chunks = request.app[SESSIONS].every_session(user, campaign_id, after)
        return await streamed_list(request, "sessions", chunks)
    page = await request.app[SESSIONS].sessions(user, campaign_id, limit, after)
    return page_response("sessions", page)


@routes.post(SESSIONS_PATH)
async def create_session(request: web.Request) -> web.Response:
    body = await parse(request, CreateSession)
    session = await request.app[SESSIONS].create_session(
        user_id(request),
        body.campaign_id.lower(),
        body.node_id.lower(),
        request_id=request_id(request),
        idempotency_key=idempotency_key(request),
    )
    return session_response(session, status=201)


@routes.get(SESSIONS_PATH + "/{id}")
async def get_session(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    raw = request.query.get("as_of")
    if raw is None:
        return session_response(await request.app[SESSIONS].session(user_id(request), session_id))
    past = await request.app[HISTORY].session_as_of(user_id(request), session_id, as_of_param(raw))
    return web.json_response({"session": past.row, "as_of": past.position})


@routes.patch(SESSIONS_PATH + "/{id}")
async def patch_session(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    expected = if_match(request)
    body = await parse(request, PatchSession, Bounds.of(request.app[SETTINGS]))
    session = await request.app[SESSIONS].patch_session(
        user_id(request),
        session_id,
        body.model_dump(include=body.model_fields_set),
        if_match=expected,
        request_id=request_id(request),
    )
    return session_response(session)


@routes.delete(SESSIONS_PATH + "/{id}")
async def delete_session(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    await request.app[SESSIONS].delete_session(user_id(request), session_id, request_id(request))
    return web.json_response({"success": True})


@routes.post(SESSIONS_PATH + "/{id}/turn")
async def turn(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    body = await parse(request, TurnRequest)
    started = await request.app[SESSIONS].start_turn(
        user_id(request),
        session_id,
        turn_ask(body, request.app[SETTINGS]),
        token_ref=request[PRINCIPAL].token_ref,
        request_id=request_id(request),
        idempotency_key=idempotency_key(request),
    )
    return started_response(started)


@routes.post(SESSIONS_PATH + "/{id}/generate-examples")
async def generate_examples(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    body = await parse(request, GenerateExamplesRequest)
    started = await request.app[SESSIONS].start_examples(
        user_id(request),
        session_id,
        examples_ask(body, request.app[SETTINGS]),
        token_ref=request[PRINCIPAL].token_ref,
        request_id=request_id(request),
        idempotency_key=idempotency_key(request),
    )
    return started_response(started)


# runs -----------------------------------------------------------------------------------
@routes.get("/api/runs/{run_id}")
async def get_run(request: web.Request) -> web.Response:
    row = await request.app[SESSIONS].run(user_id(request), run_param(request))
    return web.json_response({"run": run_json(row)})


@routes.post("/api/runs/{run_id}/cancel")
async def cancel_run(request: web.Request) -> web.Response:
    row = await request.app[SESSIONS].cancel_run(user_id(request), run_param(request))
    return web.json_response({"run": run_json(row)})


# campaigns and nodes ----------------------------------------------------------------------
@routes.post("/api/campaigns")
async def create_campaign(request: web.Request) -> web.Response:
    body = await parse(request, CreateCampaign)
    campaign = await request.app[CAMPAIGNS].create_campaign(
        user_id(request), body.name, request_id(request)
    )
    return web.json_response({"campaign": campaign_json(campaign.body)}, status=201)


@routes.get("/api/campaigns")
async def list_campaigns(request: web.Request) -> web.StreamResponse:
    user, limit, after = user_id(request), limit_query(request), after_query(request)
    if limit is None:
        chunks = request.app[CAMPAIGNS].every_campaign(user, after)
        return await streamed_list(request, "campaigns", chunks, campaign_json)
    page = await request.app[CAMPAIGNS].campaigns(user, limit, after)
    return page_response("campaigns", page, campaign_json)


@routes.get(CAMPAIGN_PATH)
async def get_campaign(request: web.Request) -> web.Response:
    campaign = await request.app[CAMPAIGNS].campaign(user_id(request), uuid_param(request))
    return web.json_response({"campaign": campaign_json(campaign.body)})


@routes.delete(CAMPAIGN_PATH)
async def delete_campaign(request: web.Request) -> web.Response:
    await request.app[CAMPAIGNS].delete_campaign(
        user_id(request), uuid_param(request), request_id(request)
    )
    return web.json_response({"success": True})


@routes.post("/api/campaigns/{id}/nodes")
async def create_node(request: web.Request) -> web.Response:
    campaign_id = uuid_param(request)
    body = await parse(request, CreateNode)
    node = await request.app[CAMPAIGNS].add_node(
        user_id(request), campaign_id, body.name, body.position, request_id(request)
    )
    return web.json_response({"node": node}, status=201)


@routes.get("/api/campaigns/{id}/nodes")
async def list_nodes(request: web.Request) -> web.Response:
    campaign_id, limit = uuid_param(request), limit_query(request)
    page = await request.app[CAMPAIGNS].nodes(
        user_id(request), campaign_id, limit, after_query(request)
    )
    if limit is None:
        return web.json_response({"nodes": page.items})
    return page_response("nodes", page)
