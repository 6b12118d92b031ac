"""Application assembly: resources in ``cleanup_ctx``, middlewares, routes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator

from aiohttp import web, web_response

from sessionstream import projections
from sessionstream.core.settings import Settings
from sessionstream.engines.base import ModelEngine
from sessionstream.eventstore.base import EventStore
from sessionstream.server import console, history, metrics, openapi, proofs, realtime, trigger
from sessionstream.server.auth import auth_middleware
from sessionstream.server.errors import Handler, error_for
from sessionstream.server.handlers import routes as api_routes
from sessionstream.server.health import healthz
from sessionstream.server.keys import (
    AUTH,
    AUTH_FAILURES,
    CAMPAIGNS,
    ENGINE,
    HISTORY,
    LIMITER,
    REQUEST_ID,
    RUN_TOKENS,
    RUNS,
    SESSIONS,
    SETTINGS,
    STORE,
)
from sessionstream.server.ratelimit import RateLimiter
from sessionstream.services.accounts import Authenticator, RunTokens
from sessionstream.services.campaigns import Campaigns
from sessionstream.services.history import History
from sessionstream.services.paging import Cursors
from sessionstream.services.quota import Quota
from sessionstream.services.runs import RunManager
from sessionstream.services.sessions import Sessions

log = logging.getLogger("sessionstream.app")


#: the collector's thresholds once a server has started (CPython's default is 700, 10, 10)
GC_THRESHOLDS = (20_000, 20, 20)


def settle_gc() -> None:
    """Once a server has started: what it built to start (imports, the SDKs' types, the
    store) is frozen out of every later collection, and young collections run less often.

    With 100 streaming runs on the defaults (``bench/stream.py --part tokens``, see
    ``docs/explanation/token-latency.md``), the collector ran a young collection every
    ~20 tokens, each touching what survived the last, paused the event loop for up to
    tens of milliseconds at a time, and a full collection over the startup heap paused
    it for 300-400 ms. A higher young threshold only lets short-lived cycles wait longer
    to be freed (up to 20,000 objects).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def make_store(settings: Settings, *, serving: bool = False) -> EventStore:
    """PostgreSQL when ``SESSIONSTREAM_DATABASE_URL`` is set, else the SQLite file,
    which a server (``serving``) holds exclusively while it runs."""
    if settings.database_url:
        from sessionstream.eventstore.postgres import PostgresEventStore

        return PostgresEventStore(
            settings.database_url,
            projections.ALL,
            max_queue=settings.subscriber_queue,
            max_pending=settings.max_pending_appends,
            page_bytes=settings.page_bytes,
            catchup_reads=settings.catchup_reads,
            compact_runs=not settings.keep_raw_deltas,
            connect_timeout_s=settings.pg_connect_timeout_s,
            statement_timeout_s=settings.statement_timeout_s,
            standby_reads=settings.pg_standby_reads,
            lease_ttl_s=settings.lease_ttl_s,
            storage_wait_s=settings.storage_wait_s,
            max_storage_waiters=settings.storage_max_waiting,
            stop_in_append=settings.fault_stop_in_append,
        )
    from sessionstream.eventstore.sqlite import SQLiteEventStore

    return SQLiteEventStore(
        settings.db_path,
        projections.ALL,
        max_queue=settings.subscriber_queue,
        max_pending=settings.max_pending_appends,
        page_bytes=settings.page_bytes,
        catchup_reads=settings.catchup_reads,
        compact_runs=not settings.keep_raw_deltas,
        exclusive=serving,
    )


def make_engine(settings: Settings) -> ModelEngine:
    """The configured engine, imported only when chosen (each provider's SDK is an
    optional extra)."""
    if settings.engine == "openai":
        from sessionstream.engines.openai_engine import OpenAIEngine

        return OpenAIEngine.from_settings(settings)
    if settings.engine == "anthropic":
        from sessionstream.engines.anthropic_engine import AnthropicEngine

        return AnthropicEngine.from_settings(settings)
    from sessionstream.engines.offline import OfflineEngine

    return OfflineEngine(pace_ms=settings.offline_pace_ms)


#: request ids are this process's random prefix and a counter: unique, 32 hex digits,
#: and far cheaper than a uuid4 (a getrandom syscall) on every request
_RID_PREFIX = secrets.token_hex(8)
_RID_COUNTER = itertools.count(1)


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, error mapping and request metrics, in one layer.

    They were three middlewares; a layer of middleware costs about as much as
    any one of these jobs, and on a cached ``GET`` the three layers were a
    tenth of the request.
    """
    started = time.perf_counter()
    incoming = request.headers.get("X-Request-Id", "")
    if 0 < len(incoming) <= 128 and incoming.isprintable():
        rid = incoming
    else:
        rid = f"{_RID_PREFIX}{next(_RID_COUNTER):016x}"
    request[REQUEST_ID] = rid
    status = 500
    try:
        try:
            response = await handler(request)
        except Exception as exc:
            response = error_for(request, exc)  # raises a redirect again
        status = response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        metrics.observe_request(request, status, started)


#: what the ``Server`` header says. aiohttp's default names the Python and aiohttp
#: versions, which tells a prober which advisories apply. The default is aiohttp's
#: module constant rather than a response hook because aiohttp answers a malformed
#: request (400) itself, before any application hook could see the response.
SERVER = "sessionstream"
setattr(web_response, "SERVER_SOFTWARE", SERVER)  # noqa: B010 - not exported, so not typed


def create_app(
    settings: Settings,
    *,
    store: EventStore | None = None,
    engine: ModelEngine | None = None,
) -> web.Application:
    # first: a ConfigError here leaves no store or engine client half-open
    secret = settings.resolved_secret()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[edge_middleware, auth_middleware],
    )
    app[SETTINGS] = settings
    app[STORE] = store or make_store(settings, serving=True)
    # the store's supervisor is the node's: its writer and pump, and every task below
    supervisor = app[STORE].supervisor
    supervisor.restart_bound_s = settings.task_restart_bound_s
    supervisor.backoff_max_s = settings.task_backoff_max_s
    app[ENGINE] = engine or make_engine(settings)
    app[RUN_TOKENS] = RunTokens(secret, settings.run_token_ttl_s)
    app[LIMITER] = RateLimiter(settings.rate_limit, settings.rate_burst)
    app[AUTH] = Authenticator(app[STORE], settings.token_cache_s)
    app[AUTH_FAILURES] = RateLimiter(
        settings.auth_failure_rate,
        settings.auth_failure_burst,
        what="failed authentications/s from this address",
    )
    app[RUNS] = RunManager(
        app[STORE],
        app[ENGINE],
        max_concurrent=settings.max_concurrent_runs,
        max_queued=settings.max_queued_runs,
        examples_concurrency=settings.max_examples_concurrency,
        coalesce_ms=settings.delta_coalesce_ms,
        engine_timeout_s=settings.engine_timeout_s,
        node_id=settings.node_id,
        lease_ttl_s=settings.lease_ttl_s,
        storage_wait_s=settings.run_storage_wait_s,
    )
    cursors = Cursors(secret)  # list cursors hold across restarts and nodes, as run tokens do
    quota = Quota(app[STORE], settings.user_quota_bytes)
    app[SESSIONS] = Sessions(app[STORE], app[RUNS], app[RUN_TOKENS], cursors, quota)
    app[CAMPAIGNS] = Campaigns(app[STORE], cursors)
    app[HISTORY] = History(app[STORE], quota)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_runs_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_routes(api_routes)
    # feature modules register their own routes; each is one concept
    for module in (history, proofs, realtime, trigger, console, metrics, openapi):
        module.install(app)
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[STORE].open()
    yield
    await app[STORE].close()


async def _runs_ctx(app: web.Application) -> AsyncIterator[None]:
    runs = app[RUNS]
    recovered = await runs.recover_orphans()
    if recovered:
        log.warning("recovered %d interrupted run(s) at start-up", recovered)
    upkeep = asyncio.create_task(runs.upkeep(), name="run-upkeep")  # spawns supervised loops
    yield
    upkeep.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await upkeep
    await runs.shutdown()
    await app[ENGINE].aclose()
