"""The pieces the OpenAPI document (``server/openapi.py``) is built of.

References, the error answers every operation shares, the parameters and
headers several operations take, links, and ``operation`` that puts an operation
together from them: one place says what every operation answers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sessionstream.server import schemas
from sessionstream.server.schemas import MAX_IDEMPOTENCY_KEY, UUID_PATTERN

REF = "#/components/schemas/{model}"


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def error(description: str) -> dict[str, Any]:
    return {"description": description, "content": json_content(ref(schemas.ErrorEnvelope))}


ERRORS = {
    "400": error("Malformed JSON, wrong types, unknown fields or bad UUIDs"),
    "401": error("Missing or invalid bearer token"),
    "404": error("Unknown resource, or another user's"),
    "413": error(
        "Body larger than the limit (`payload_too_large`), or a write past the user's "
        "storage quota (`quota_exceeded`); nothing was written"
    ),
    "429": error("Rate limited; see Retry-After"),
    "503": error(
        "Storage unavailable or overloaded (see Retry-After); nothing was written, except"
        " with code `outcome_unknown`: storage went away while the write was committing"
        " (PostgreSQL), so it may have been written: read before you retry"
    ),
}


def query(
    name: str, schema: dict[str, Any], *, required: bool | None = True, description: str = ""
) -> dict[str, Any]:
    """A query parameter (``required=None`` leaves the key out: not required)."""
    param: dict[str, Any] = {"name": name, "in": "query"}
    if required is not None:
        param["required"] = required
    if description:
        param["description"] = description
    param["schema"] = schema
    return param


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


def links(op_ids: tuple[str, ...], parameters: dict[str, str]) -> dict[str, Any]:
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


def operation(
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
    success: dict[str, Any] = {"description": "OK", "content": json_content(ok)}
    if ok == ref(schemas.SessionEnvelope):
        success["headers"] = ETAG
    if links:
        success["links"] = links
    out: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {status: success, **ERRORS},
    }
    if op_id:
        out["operationId"] = op_id
    for code in extra:
        out["responses"][code] = error(
            {
                "409": "Session busy",
                "412": "Stale If-Match",
                "500": "The run could not be started; the claim was released, so the "
                "session can be retried",
            }.get(code, "Error")
        )
    if body is not None:
        out["requestBody"] = {"required": True, "content": json_content(ref(body))}
    if params:
        out["parameters"] = params
    return out
