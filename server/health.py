"""``/healthz``: whether this node can serve, answered within a bound, degraded states named.

A load balancer polls it every few seconds and gives up after its own
timeout, so it must answer fast whatever the database does: each probe
runs within ``PROBE_BOUND_S`` and one that does not answer in time is
reported as such. The states:

- ``ok`` (200): background tasks up, the log readable, writes not known
  to fail.
- ``degraded`` (200): the node still serves reads and subscriptions but
  ``degraded`` names what does not work, e.g. ``{"writes": "unavailable:
  no writable PostgreSQL host ..."}`` during a database failover. It stays
  in rotation: its reads work, and its writes wait for storage
  (``SESSIONSTREAM_STORAGE_WAIT_S``) like any other node's would. The probe
  itself never waits: it says what does not work now.
- ``unhealthy`` (503): a background task has not come back within its
  bound (``core/supervisor.py``), or the log cannot be read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web

from sessionstream.core.errors import SessionStreamError
from sessionstream.eventstore.storagewait import impatient
from sessionstream.server.keys import STORE

#: the longest any one probe of ``/healthz`` waits; both run at once
PROBE_BOUND_S = 1.5
_NO_STORE = {"Cache-Control": "no-store"}
T = TypeVar("T")


async def _bounded(probe: Awaitable[T]) -> tuple[T | None, str | None]:
    """The probe's value and None, or None and why it failed."""
    try:
        async with asyncio.timeout(PROBE_BOUND_S):
            return await probe, None
    except TimeoutError:
        return None, f"no answer within {PROBE_BOUND_S:g}s"
    except SessionStreamError as exc:
        return None, exc.message


async def healthz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    supervisor = store.supervisor
    with impatient():  # report an outage now; requests wait it out, a probe must not
        (head, reads), (trouble, writes) = await asyncio.gather(
            _bounded(store.head_position()), _bounded(store.write_trouble())
        )
    degraded: dict[str, str] = {}
    if reads is not None:
        degraded["reads"] = f"unavailable: {reads}"
    why_not = writes or trouble
    if why_not is not None:
        degraded["writes"] = f"unavailable: {why_not}"
    failing = supervisor.unhealthy()
    if failing or reads is not None:
        names = sorted(failing)
        problems = [f"reads {degraded['reads']}"] if reads is not None else []
        if names:
            problems.append(
                f"background task(s) {', '.join(names)} have not restarted within "
                f"{supervisor.restart_bound_s:g}s"
            )
        body: dict[str, object] = {
            "status": "unhealthy",
            "error": {"code": "unhealthy", "message": "; ".join(problems)},
        }
        if names:
            body["failing"] = {name: round(failing[name], 1) for name in names}
        if degraded:
            body["degraded"] = degraded
        return web.json_response(body, status=503, headers=_NO_STORE)
    body = {"status": "degraded" if degraded else "ok", "head_position": head}
    if degraded:
        body["degraded"] = degraded
    restarting = sorted(n for n in list(supervisor.tasks) if supervisor.down(n) is not None)
    if restarting:
        body["restarting"] = restarting
    return web.json_response(body, headers=_NO_STORE)
