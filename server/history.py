"""History over HTTP: the audit log of a session, and rollbacks.

- ``GET .../{id}/events?after=&limit=``: the session stream and its runs'
  streams in log order, each event with its hash (and the id and metadata the
  hash covers, so an auditor can recompute every chain from the API alone).
- ``POST .../{id}/skeleton/rollback {"framework_version": N}`` and
  ``POST .../{id}/draft/rollback {"index": N}``: make an earlier skeleton or
  draft current again as a new revision (``services/history.py``).
- ``POST .../{id}/fork {"position"} | {"version"}``: a new session of the caller's
  as the source was at that point (``services/fork.py``), 201.
- ``GET .../{id}/diff?from=V1&to=V2``: what changed between two versions
  (``services/diff.py``).
"""

from __future__ import annotations

from aiohttp import web

from sessionstream.eventstore.model import RecordedEvent, data_json
from sessionstream.server.errors import parse
from sessionstream.server.frames import dumps
from sessionstream.server.handlers import (
    SESSIONS_PATH,
    if_match,
    request_id,
    session_response,
    user_id,
    uuid_param,
)
from sessionstream.server.keys import HISTORY, STORE
from sessionstream.server.numbers import MAX_VALUE, natural, optional_natural
from sessionstream.server.schemas import DraftRollback, EventJson, ForkRequest, SkeletonRollback
from sessionstream.services.diff import session_diff
from sessionstream.services.fork import fork_session

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def event_text(event: RecordedEvent) -> str:
    """One audit-log entry as JSON: what happened, who did it, when, and its hash.

    ``data`` is spliced in as the text the store holds (``data_json``), never
    parsed and encoded again: a page's memory is its bytes, not the objects a
    stored payload would parse into (a 3 MB list of ``{}`` is ~90 MB of dicts).
    """
    entry: EventJson = {
        "position": event.position,
        "stream_id": event.stream_id,
        "version": event.version,
        "type": event.type,
        "actor": event.metadata.get("actor"),
        "recorded_at": event.recorded_at,
        "hash": event.hash,
        "event_id": event.event_id,
        "metadata": event.metadata,
    }
    data = data_json(event)
    return f'{dumps(entry)[:-1]},"data":{dumps(event.data) if data is None else data}}}'


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    value = optional_natural(request.query.get(name), name, low=low, high=high)
    return default if value is None else value


async def session_events(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    after = query_int(request, "after", 0, 0, MAX_VALUE)
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    page = await request.app[HISTORY].events(user_id(request), session_id, after, limit)
    events = ",".join(event_text(e) for e in page.events)
    return web.Response(
        text=f'{{"events":[{events}],"next":{dumps(page.next)}}}', content_type="application/json"
    )


async def rollback_skeleton(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    expected = if_match(request)
    body = await parse(request, SkeletonRollback)
    session = await request.app[HISTORY].rollback_skeleton(
        user_id(request),
        session_id,
        body.framework_version,
        if_match=expected,
        request_id=request_id(request),
    )
    return session_response(session)


async def rollback_draft(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    expected = if_match(request)
    body = await parse(request, DraftRollback)
    session = await request.app[HISTORY].rollback_draft(
        user_id(request),
        session_id,
        body.index,
        if_match=expected,
        request_id=request_id(request),
    )
    return session_response(session)


async def fork(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    body = await parse(request, ForkRequest)
    session = await fork_session(
        request.app[STORE],
        user_id(request),
        session_id,
        position=body.position,
        version=body.version,
        node_id=body.node_id,
        request_id=request_id(request),
        quota=request.app[HISTORY].quota,
    )
    return session_response(session, status=201)


async def diff(request: web.Request) -> web.Response:
    session_id = uuid_param(request)
    # both ends are required, as the document says: a diff against a guessed end is a
    # different question from the one the client meant to ask
    first, last = (
        natural(request.query.get(name, ""), name, low=1, high=MAX_VALUE) for name in ("from", "to")
    )
    found = await session_diff(request.app[STORE], user_id(request), session_id, first, last)
    return web.json_response(
        {
            "from": found.from_version,
            "to": found.to_version,
            "skeleton": [
                {"field": c.field, "before": c.before, "after": c.after} for c in found.skeleton
            ],
            "draft_subject": found.subject,
            "draft_body": found.body,
            "messages_added": list(found.messages_added),
        }
    )


def install(app: web.Application) -> None:
    app.router.add_get(SESSIONS_PATH + "/{id}/events", session_events)
    app.router.add_post(SESSIONS_PATH + "/{id}/skeleton/rollback", rollback_skeleton)
    app.router.add_post(SESSIONS_PATH + "/{id}/draft/rollback", rollback_draft)
    app.router.add_post(SESSIONS_PATH + "/{id}/fork", fork)
    app.router.add_get(SESSIONS_PATH + "/{id}/diff", diff)
