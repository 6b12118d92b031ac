"""Typed application keys shared by the handlers."""

from __future__ import annotations

from aiohttp import web

from engines.base import ModelEngine
from eventstore.base import EventStore
from server.auth import Authenticator, Principal, RunTokens
from server.ratelimit import RateLimiter
from server.runs import RunManager
from server.service import Service
from sessionstream.config import Settings

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", EventStore)
SERVICE = web.AppKey("service", Service)
RUNS = web.AppKey("runs", RunManager)
ENGINE = web.AppKey("engine", ModelEngine)
RUN_TOKENS = web.AppKey("run_tokens", RunTokens)
LIMITER = web.AppKey("limiter", RateLimiter)
AUTH = web.AppKey("auth", Authenticator)
AUTH_FAILURES = web.AppKey("auth_failures", RateLimiter)

REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
