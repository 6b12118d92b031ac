"""Prometheus metrics at ``/metrics``.

Counters and histograms are updated on the hot path; everything that is a
current level (active runs, subscribers, queue depths) is read at scrape time
by a collector, so it costs nothing between scrapes. Each app has its own
registry, so several apps in one process (tests) never share numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sessionstream.server.keys import AUTH_FAILURES, LIMITER, RUNS, STORE

REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
HTTP_REQUESTS = web.AppKey("metrics_http_requests", Counter)
HTTP_SECONDS = web.AppKey("metrics_http_seconds", Histogram)
#: (method, route, status) -> its counter and histogram children
HTTP_CHILDREN = web.AppKey("metrics_http_children", dict[tuple[str, str, int], tuple[Any, Any]])
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
APPEND_EVENTS = web.AppKey("metrics_append_events", Counter)
APPEND_BATCH = web.AppKey("metrics_append_batch", Histogram)


class _LevelCollector(Collector):
    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        app = self.app
        runs = app[RUNS]
        hub = app[STORE].hub
        yield GaugeMetricFamily(
            "sessionstream_runs_active", "Runs executing or queued here", value=runs.active
        )
        yield GaugeMetricFamily(
            "sessionstream_runs_queued", "Runs waiting for a slot", value=runs.queued
        )
        yield CounterMetricFamily(
            "sessionstream_runs_finished", "Runs this process finished", value=runs.completed
        )
        yield CounterMetricFamily(
            "sessionstream_recoveries", "Interrupted runs ended by recovery", value=runs.recovered
        )
        yield GaugeMetricFamily(
            "sessionstream_subscribers",
            "Live log subscribers (hub listeners)",
            value=hub.listener_count,
        )
        yield GaugeMetricFamily(
            "sessionstream_subscriber_queued_events",
            "Events buffered for live subscribers",
            value=hub.queued_events(),
        )
        yield CounterMetricFamily(
            "sessionstream_subscriber_lag_fallbacks",
            "Subscribers switched back to catch-up reads",
            value=hub.lag_fallbacks,
        )
        yield GaugeMetricFamily(
            "sessionstream_log_head_position",
            "Newest global position published here",
            value=hub.published_position,
        )
        yield GaugeMetricFamily(
            "sessionstream_appends_waiting",
            "Append requests waiting for the log's writer",
            value=app[STORE].commits.waiting,
        )
        overloaded = CounterMetricFamily(
            "sessionstream_overloaded",
            "Requests refused with 503 because a queue was full",
            labels=["queue"],
        )
        overloaded.add_metric(["runs"], runs.refused)
        overloaded.add_metric(["appends"], app[STORE].commits.refused)
        yield overloaded
        supervisor = app[STORE].supervisor
        crashes = CounterMetricFamily(
            "sessionstream_task_crashes",
            "Unexpected exceptions in background tasks, each logged and the task restarted",
            labels=["task"],
        )
        for kind, count in sorted(supervisor.crashes.items()):
            crashes.add_metric([kind], count)
        yield crashes
        down = GaugeMetricFamily(
            "sessionstream_task_down",
            "1 while a background task is crashing and has not run steadily since",
            labels=["task"],
        )
        for name in sorted(supervisor.tasks):
            down.add_metric([name], 0.0 if supervisor.down(name) is None else 1.0)
        yield down
        yield CounterMetricFamily(
            "sessionstream_rate_limited",
            "Requests refused with 429 (per-credential rate or failed-authentication rate)",
            value=app[LIMITER].limited + app[AUTH_FAILURES].limited,
        )


def observe_request(request: web.Request, status: int, started: float) -> None:
    """Count one answered request and its latency (called by the app's middleware)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    # a made-up method must not become a label: label sets are never freed
    method = request.method if request.method in KNOWN_METHODS else "OTHER"
    key = (method, route, status)
    children = request.app[HTTP_CHILDREN]
    child = children.get(key)
    if child is None:  # labels() takes a lock and builds a tuple: once per combination
        child = children[key] = (
            request.app[HTTP_REQUESTS].labels(method, route, str(status)),
            request.app[HTTP_SECONDS].labels(method, route),
        )
    child[0].inc()
    child[1].observe(time.perf_counter() - started)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def install(app: web.Application) -> None:
    registry = CollectorRegistry()
    app[REGISTRY] = registry
    app[HTTP_REQUESTS] = Counter(
        "sessionstream_http_requests",
        "HTTP requests",
        ["method", "route", "status"],
        registry=registry,
    )
    app[HTTP_SECONDS] = Histogram(
        "sessionstream_http_request_seconds",
        "HTTP request latency",
        ["method", "route"],
        registry=registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    )
    app[HTTP_CHILDREN] = {}
    app[APPEND_EVENTS] = Counter(
        "sessionstream_appended_events", "Events appended to the log", registry=registry
    )
    app[APPEND_BATCH] = Histogram(
        "sessionstream_append_batch_requests",
        "Append requests per group commit",
        registry=registry,
        buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
    )
    registry.register(_LevelCollector(app))
    store = app[STORE]
    events, batches = app[APPEND_EVENTS], app[APPEND_BATCH]

    def on_batch(requests: int, appended: int) -> None:
        batches.observe(requests)
        events.inc(appended)

    if hasattr(store, "on_batch"):
        store.on_batch = on_batch
    app.router.add_get("/metrics", metrics)
