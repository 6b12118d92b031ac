"""Typed application keys shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from sessionstream.core.settings import Settings
from sessionstream.engines.base import ModelEngine
from sessionstream.eventstore.base import EventStore
from sessionstream.server.ratelimit import RateLimiter
from sessionstream.services.accounts import Authenticator, Principal, RunTokens
from sessionstream.services.campaigns import Campaigns
from sessionstream.services.history import History
from sessionstream.services.runs import RunManager
from sessionstream.services.sessions import Sessions

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", EventStore)
SESSIONS = web.AppKey("sessions", Sessions)
CAMPAIGNS = web.AppKey("campaigns", Campaigns)
HISTORY = web.AppKey("history", History)
RUNS = web.AppKey("runs", RunManager)
ENGINE = web.AppKey("engine", ModelEngine)
RUN_TOKENS = web.AppKey("run_tokens", RunTokens)
LIMITER = web.AppKey("limiter", RateLimiter)
AUTH = web.AppKey("auth", Authenticator)
AUTH_FAILURES = web.AppKey("auth_failures", RateLimiter)

REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
