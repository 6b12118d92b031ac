"""The log's checkpoints and proofs over HTTP, for auditors who do not trust this server.

- ``GET /api/log/checkpoint``: the newest signed checkpoint (C2SP signed note,
  ``text/plain``) with its size and root in headers;
- ``GET /api/log/inclusion?position=P[&size=N]``: the audit path of one of the
  caller's events;
- ``GET /api/log/consistency?first=M&second=N``: that the tree of ``M`` events
  is a prefix of the tree of ``N``.

Proofs are hashes only (``services/proofs.py`` decides who may ask what).
The server records a checkpoint every ``checkpoint_interval_s``; a node
without a signing key (PostgreSQL without ``SESSIONSTREAM_LOG_KEY``) serves
no checkpoints and says so.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from sessionstream.core.errors import ConfigError, StorageUnavailable
from sessionstream.eventstore.checkpoint import Signer
from sessionstream.server.handlers import user_id
from sessionstream.server.history import query_int
from sessionstream.server.keys import SETTINGS, STORE
from sessionstream.services import proofs

log = logging.getLogger("sessionstream.proofs")

SIGNER = web.AppKey("log_signer", Signer)
MAX = 10**15


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _signer(request: web.Request) -> Signer:
    signer = request.app.get(SIGNER)
    if signer is None:
        raise StorageUnavailable("this node has no log signing key (SESSIONSTREAM_LOG_KEY)")
    return signer


async def checkpoint(request: web.Request) -> web.Response:
    kept = await proofs.latest_checkpoint(request.app[STORE], _signer(request))
    return web.Response(
        text=kept.note,
        content_type="text/plain",
        headers={"X-Log-Size": str(kept.size), "X-Log-Root": _b64(kept.root)},
    )


async def inclusion(request: web.Request) -> web.Response:
    position = query_int(request, "position", 0, 1, MAX)
    size = query_int(request, "size", 0, 0, MAX) or None
    proof = await proofs.inclusion(request.app[STORE], position, size, user_id(request))
    return web.json_response(
        {
            "position": proof.position,
            "leaf_index": proof.position - 1,
            "tree_size": proof.size,
            "leaf_hash": _b64(proof.leaf),
            "hashes": [_b64(h) for h in proof.path],
        }
    )


async def consistency(request: web.Request) -> web.Response:
    first = query_int(request, "first", 0, 1, MAX)
    second = query_int(request, "second", 0, 1, MAX)
    hashes = await proofs.consistency(request.app[STORE], first, second, user_id(request))
    return web.json_response(
        {"first": first, "second": second, "hashes": [_b64(h) for h in hashes]}
    )


async def _checkpoints_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    try:
        app[SIGNER] = proofs.load_signer(settings)
    except ConfigError as exc:
        log.warning("no checkpoints are signed on this node: %s", exc.message)
        yield
        return
    async with proofs.checkpoints(app[STORE], app[SIGNER], settings.checkpoint_interval_s):
        yield


def install(app: web.Application) -> None:
    app.router.add_get("/api/log/checkpoint", checkpoint)
    app.router.add_get("/api/log/inclusion", inclusion)
    app.router.add_get("/api/log/consistency", consistency)
    app.cleanup_ctx.append(_checkpoints_ctx)
