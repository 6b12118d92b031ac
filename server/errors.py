"""The one place errors become HTTP: ``{"error": {"code", "message", "details"}}``.

Handlers raise ``SessionStreamError`` subclasses (or let pydantic fail);
:func:`error_for` (called by the app's one middleware) maps them to a status
and the JSON body, so no handler builds an error response by hand.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from sessionstream.core.errors import (
    PayloadTooLarge,
    RetryLater,
    SessionStreamError,
    ValidationFailed,
)
from sessionstream.server.bounds import Bounds

log = logging.getLogger("sessionstream.http")

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}
MAX_JSON_DEPTH = 64
#: the status a request whose client hung up is recorded with (nginx's; never sent)
CLIENT_GONE = 499


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return web.json_response(body, status=status, headers=headers)


def to_response(exc: SessionStreamError) -> web.Response:
    headers: dict[str, str] = {}
    if isinstance(exc, RetryLater):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    return error_response(exc.status, exc.code, exc.message, exc.details, headers)


def error_for(request: web.Request, exc: Exception) -> web.Response:
    """The response for what a handler raised; a redirect (an HTTP exception
    below 400) is not an error and is raised again."""
    if isinstance(exc, SessionStreamError):
        if exc.status >= 500:
            log.error("request failed: %s", exc.message)
        return to_response(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        if exc.status == 413:
            return to_response(
                PayloadTooLarge(
                    f"the body is larger than the limit of {request.app._client_max_size} bytes"
                )
            )
        code = HTTP_CODES.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason, headers=_allow(exc))
    if client_gone(request, exc):
        # the client hung up (a timeout of its own, a closed tab): nobody is there to
        # answer, and it is not a fault of the server's; one line, no traceback
        log.info("%s %s: the client went away (%r)", request.method, request.path, exc)
        return error_response(CLIENT_GONE, "client_closed_request", "the client went away")
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, "internal_error", "the server failed; nothing was changed")


def client_gone(request: web.Request, exc: Exception) -> bool:
    """Whether ``exc`` is the client's hanging up: a connection error on a request whose
    connection is closed (aiohttp fails the body's read with ``ConnectionResetError``)."""
    transport = request.transport
    return isinstance(exc, ConnectionError) and (transport is None or transport.is_closing())


def _allow(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


def _depth(value: Any, limit: int) -> int:
    """Nesting depth, iteratively, so hostile input cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    # 1e400 parses to inf: storing it would make every later response invalid JSON
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


#: built once: ``json.loads`` with options builds a decoder per call
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise ValidationFailed("the request needs a JSON body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationFailed("the body is not valid UTF-8") from exc
    try:
        if text.startswith("\ufeff"):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except RecursionError as exc:
        raise ValidationFailed(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels") from exc
    except ValueError as exc:
        raise ValidationFailed(f"the body is not valid JSON: {exc}") from exc
    if _depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ValidationFailed(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


async def parse(request: web.Request, model: type[M], bounds: Bounds | None = None) -> M:
    """The body, validated against ``model`` (and first against ``bounds``, if given)."""
    value = await read_json(request)
    if not isinstance(value, dict):
        raise ValidationFailed("the body must be a JSON object")
    if bounds is not None:
        bounds.check(value)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise validation_failed(exc) from exc


def validation_failed(exc: ValidationError) -> ValidationFailed:
    details = [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    first = details[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        message = f"unknown field '{where}'"
    else:
        message = f"{where}: {first['msg']}"
    return ValidationFailed(message, details=details)
