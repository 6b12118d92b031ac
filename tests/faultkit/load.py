"""A steady load on every node of a cluster: clients that patch, turn and read, and one
write probe per node that measures how long its writes take.

Clients pick a node at random for every request, the faulted one included,
as clients behind a careless load balancer would. Only what a node answered
2xx is recorded as acknowledged: a request cut off by a fault has an unknown
outcome. The probes PATCH a session of their own on their own node in a
loop; their latencies while another node is faulted are the "stall of other
nodes' writes" (a request that never comes back counts its whole timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.faultkit.cluster import Cluster, Node
from tests.torture.harness import MESSAGES, SESSIONS, AckedPatch

#: a probe's request timeout: long enough to measure a stall rather than cut it short
PROBE_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = 8.0


@dataclass(frozen=True, slots=True)
class AckedTurn:
    session_id: str
    run_id: str
    token: str
    node: int


@dataclass(frozen=True, slots=True)
class Write:
    """One probe write: on which node, when it was sent and answered, and whether it was ok."""

    node: int
    sent: float
    answered: float
    ok: bool

    @property
    def took(self) -> float:
        return self.answered - self.sent


@dataclass
class Acks:
    patches: list[AckedPatch] = field(default_factory=list)
    turns: list[AckedTurn] = field(default_factory=list)
    refused_busy: int = 0
    cut_off: int = 0


async def new_session(http: aiohttp.ClientSession, base: str, token: str) -> str:
    """A campaign, a sequence node and a chat session, made through ``base`` (a node's
    URL, or "" for a client with a ``base_url``)."""
    h = {"Authorization": f"Bearer {token}"}

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with http.post(base + path, json=body, headers=h) as r:
            payload: dict[str, Any] = await r.json()
            assert r.status == 201, (r.status, payload)
            return payload

    campaign = (await post("/api/campaigns", {"name": "faults"}))["campaign"]["id"]
    seq = (await post(f"/api/campaigns/{campaign}/nodes", {"name": "intro"}))["node"]["id"]
    created = await post(SESSIONS, {"campaign_id": campaign, "node_id": seq})
    return str(created["session"]["id"])


class Load:
    """``clients`` clients over ``sessions`` and a write probe per node, until ``stop()``."""

    def __init__(
        self,
        cluster: Cluster,
        http: aiohttp.ClientSession,
        sessions: list[str],
        probe_sessions: list[str],
        *,
        clients: int,
        seed: int,
    ) -> None:
        self.cluster = cluster
        self.http = http
        self.sessions = sessions
        self.probe_sessions = probe_sessions
        self.clients = clients
        self.seed = seed
        self.acks = Acks()
        #: called with every acknowledged turn (the suite subscribes to its run)
        self.on_turn: Callable[[AckedTurn], None] = lambda _turn: None
        self.writes: list[Write] = []
        self._titles = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.h = {"Authorization": f"Bearer {cluster.token}"}

    def start(self) -> None:
        for n in range(self.clients):
            self._tasks.append(asyncio.create_task(self._client(n)))
        for node in self.cluster.nodes:
            self._tasks.append(asyncio.create_task(self._probe(node)))

    async def stop(self) -> None:
        self._stopping.set()
        done, pending = await asyncio.wait(self._tasks, timeout=PROBE_TIMEOUT_S + 5)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    # the clients ------------------------------------------------------------------------
    async def _client(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
        while not self._stopping.is_set():
            node = rng.choice(self.cluster.nodes)
            sid = rng.choice(self.sessions)
            action = rng.choices(("patch", "turn", "read"), (6, 2, 2))[0]
            try:
                if action == "patch":
                    await self.patch(node, sid, timeout)
                elif action == "turn":
                    await self._turn(node, sid, rng, timeout)
                else:
                    async with self.http.get(
                        f"{node.base_url}{SESSIONS}/{sid}", headers=self.h, timeout=timeout
                    ) as r:
                        await r.read()
            except (aiohttp.ClientError, OSError, TimeoutError):
                self.acks.cut_off += 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0.01, 0.05))

    async def patch(self, node: Node, sid: str, limit: aiohttp.ClientTimeout) -> bool:
        """One PATCH with a unique title; True (and recorded) when acknowledged."""
        title = f"s{self.seed}-{next(self._titles)}"
        async with self.http.patch(
            f"{node.base_url}{SESSIONS}/{sid}",
            json={"title": title},
            headers=self.h,
            timeout=limit,
        ) as r:
            await r.read()
            if r.status == 200:
                etag = int(r.headers["ETag"].strip('"'))
                self.acks.patches.append(AckedPatch(sid, title, etag))
                return True
            return False

    async def _turn(
        self, node: Node, sid: str, rng: random.Random, limit: aiohttp.ClientTimeout
    ) -> None:
        async with self.http.post(
            f"{node.base_url}{SESSIONS}/{sid}/turn",
            json={"message": rng.choice(MESSAGES)},
            headers=self.h,
            timeout=limit,
        ) as r:
            if r.status == 200:
                self.record_turn(sid, await r.json(), node)
            else:
                await r.read()
                self.acks.refused_busy += r.status == 409

    def record_turn(self, sid: str, started: dict[str, Any], node: Node) -> AckedTurn:
        turn = AckedTurn(sid, started["runId"], started["publicAccessToken"], node.index)
        self.acks.turns.append(turn)
        self.on_turn(turn)
        return turn

    # the probes -------------------------------------------------------------------------
    async def _probe(self, node: Node) -> None:
        sid = self.probe_sessions[node.index]
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        while not self._stopping.is_set():
            sent = time.monotonic()
            ok = False
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                ok = await self.patch(node, sid, timeout)
            self.writes.append(Write(node.index, sent, time.monotonic(), ok))
            await asyncio.sleep(0.05 if ok else 0.2)

    def longest_write(self, nodes: set[int], start: float, end: float) -> float:
        """The longest probe write on ``nodes`` that overlapped ``[start, end]``."""
        slowest = self.slowest_write(nodes, start, end)
        return slowest.took if slowest is not None else 0.0

    def slowest_write(self, nodes: set[int], start: float, end: float) -> Write | None:
        overlapping = [
            w for w in self.writes if w.node in nodes and w.answered >= start and w.sent <= end
        ]
        return max(overlapping, key=lambda w: w.took, default=None)
