"""A node paused with SIGSTOP stalls no other node, loses its run, and writes nothing after.

Issue 19's two must-show tests, on three real server processes sharing one
PostgreSQL schema (short lease: ``LEASE_TTL_S``):

- node A is paused *inside an append*: deterministically, through the
  ``SESSIONSTREAM_FAULT_STOP_IN_APPEND`` hook, which makes A's writer reserve
  the log's head, plan its batch and stop its own process right there (the
  point where the old writer held the cluster-wide ``log_head`` lock);
- node A is paused *between transactions*: SIGSTOP from outside while its
  run streams, checked in ``pg_stat_activity`` to hold no transaction.

Meanwhile nodes B and C keep writing (a write loop on each): their longest
write is the stall A caused, printed in the proof summary beside the bound
(``eventstore/leases.py``: a reservation lapses after min(TTL/8, 1 s)). A's
run must be taken over (``run.failed``, ``interrupted``) within 1.5 lease
times of the pause, and once A resumes (SIGCONT) it must write nothing: the
log's head stays where the others left it and the run's stream ends with the
takeover's event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sessionstream.core.vocabulary import run_stream
from sessionstream.eventstore.leases import lock_bounds
from tests.pg import DSN, throwaway_schema, url_with_schema
from tests.serverproc import ServerProcess, base_env, create_user
from tests.torture.report import report

asyncpg = pytest.importorskip("asyncpg")

pytestmark = pytest.mark.postgres

S = "/api/campaigns/ai-chat-sessions"
LEASE_TTL_S = 2.0
#: the longest another node's write may take while A is paused, on a loaded machine; the
#: old writer stalled them for the whole pause (2 TTL here), the bound is TTL/8
STALL_LIMIT_S = 1.5 * LEASE_TTL_S
PROMPT = "Write an intro email for enterprise VPs of Sales about time-to-ROI"


@dataclass
class Node:
    name: str
    server: ServerProcess

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    def stopped(self) -> bool:
        """Whether the process is stopped (state T in /proc)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


@dataclass
class Cluster:
    token: str
    schema: str
    a: Node
    others: list[Node]
    stop_file: Path


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_pause"):
        yield name


@pytest.fixture
def cluster(schema: str, tmp_path: Path) -> Iterator[Cluster]:
    store = ["--database-url", url_with_schema(schema)]
    token = create_user(store)
    stop_file = tmp_path / "stop-in-append"
    common = {
        "SESSIONSTREAM_OFFLINE_PACE_MS": "100",
        "SESSIONSTREAM_LEASE_TTL_S": str(LEASE_TTL_S),
        "SESSIONSTREAM_DELTA_COALESCE_MS": "0",
    }
    nodes: list[Node] = []
    try:
        for name in ("a", "b", "c"):
            extra = {"SESSIONSTREAM_NODE_ID": f"node-{name}"}
            if name == "a":
                extra["SESSIONSTREAM_FAULT_STOP_IN_APPEND"] = str(stop_file)
            server = ServerProcess(
                store, env=base_env(**common, **extra), log_path=tmp_path / f"node-{name}.log"
            )
            nodes.append(Node(name, server))
            server.start(60)
        yield Cluster(token, schema, nodes[0], nodes[1:], stop_file)
    finally:
        for node in nodes:
            node.server.stop()


class Api:
    def __init__(self, http: aiohttp.ClientSession, token: str) -> None:
        self.http = http
        self.h = {"Authorization": f"Bearer {token}"}

    async def call(self, node: Node, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(
            method, node.server.base_url + path, json=body, headers=self.h
        ) as resp:
            payload = await resp.json()
            assert resp.status < 300, (resp.status, payload)
            return payload

    async def session(self, node: Node) -> str:
        campaign = (await self.call(node, "POST", "/api/campaigns", {"name": "c"}))["campaign"]
        path = f"/api/campaigns/{campaign['id']}/nodes"
        seq_node = (await self.call(node, "POST", path, {"name": "n"}))["node"]
        body = {"campaign_id": campaign["id"], "node_id": seq_node["id"]}
        return str((await self.call(node, "POST", S, body))["session"]["id"])


@dataclass
class Writes:
    """The other nodes' writes: (sent, answered) of each, until ``stop`` is set."""

    done: list[tuple[float, float]] = field(default_factory=list)
    #: writes that failed (a 503 when a statement timed out on a loaded machine): their
    #: time counts as a stall too, since a stalled write ends that way
    failed: list[tuple[float, float]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stall(self, start: float, end: float) -> float:
        """The longest write, done or failed, that was waiting at some point in [start, end]."""
        every = [*self.done, *self.failed]
        return max((b - a for a, b in every if b >= start and a <= end), default=0.0)


async def write_loop(api: Api, node: Node, writes: Writes) -> None:
    """Create campaigns on ``node`` back to back (one append each)."""
    while not writes.stop.is_set():
        sent = time.monotonic()
        try:
            await api.call(node, "POST", "/api/campaigns", {"name": "load"})
        except (AssertionError, aiohttp.ClientError):
            writes.failed.append((sent, time.monotonic()))
            continue
        writes.done.append((sent, time.monotonic()))


async def head(cluster: Cluster) -> int:
    conn = await asyncpg.connect(url_with_schema(cluster.schema), timeout=10)
    try:
        return int(await conn.fetchval("SELECT head FROM log_head WHERE id = 1"))
    finally:
        await conn.close()


async def run_events(cluster: Cluster, run_id: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(url_with_schema(cluster.schema), timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT position, type FROM events WHERE stream_id = $1 ORDER BY version",
            run_stream(run_id),
        )
        return [(int(r[0]), str(r[1])) for r in rows]
    finally:
        await conn.close()


async def a_in_transaction(cluster: Cluster) -> list[str]:
    """The states of node A's backends inside an append transaction: its writer's, or
    any holding a lock on the log's head (a paused node's other transactions, a Merkle
    tree integration say, are no append's)."""
    conn = await asyncpg.connect(DSN, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT a.state FROM pg_stat_activity a WHERE a.application_name LIKE $1 "
            "AND a.xact_start IS NOT NULL AND (a.application_name LIKE 'sessionstream-writer:%' "
            "OR EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE l.pid = a.pid "
            "AND c.relname = 'log_head' AND n.nspname = $2))",
            f"sessionstream-%:{cluster.a.pid}",
            cluster.schema,
        )
        return [str(r[0]) for r in rows]
    finally:
        await conn.close()


async def reserved_by(cluster: Cluster) -> str | None:
    conn = await asyncpg.connect(url_with_schema(cluster.schema), timeout=10)
    try:
        value = await conn.fetchval(
            "SELECT reserved_by FROM log_head WHERE id = 1 AND reserved_until > clock_timestamp()"
        )
        return None if value is None else str(value)
    finally:
        await conn.close()


async def pause_and_check(
    cluster: Cluster, request: pytest.FixtureRequest, *, inside_append: bool
) -> None:
    bound = lock_bounds(LEASE_TTL_S)
    a = cluster.a
    async with aiohttp.ClientSession() as http:
        api = Api(http, cluster.token)
        sid = await api.session(a)
        started = await api.call(a, "POST", f"{S}/{sid}/turn", {"message": PROMPT})
        run_id = started["runId"]
        deadline = time.monotonic() + 30
        while sum(t == "message.delta" for _, t in await run_events(cluster, run_id)) < 3:
            assert time.monotonic() < deadline, "node A's run never streamed"
            await asyncio.sleep(0.05)

        writes = Writes()
        loops = [
            asyncio.create_task(write_loop(api, node, writes))
            for node in cluster.others
            for _ in range(2)
        ]
        try:
            await asyncio.sleep(0.5)  # the others' writes before the pause, for comparison
            before = writes.stall(0, time.monotonic())

            # 1. pause node A
            if inside_append:
                cluster.stop_file.touch()  # A's next append stops itself, mid-append
            else:
                a.server.pause()
            deadline = time.monotonic() + 10
            while not a.stopped():
                assert time.monotonic() < deadline, "node A never stopped"
                await asyncio.sleep(0.002)
            paused = time.monotonic()
            if inside_append:
                # stopped holding the head's reservation, its batch planned
                holder = await reserved_by(cluster)
                assert holder is not None and holder.startswith(f"{a.pid}-"), holder
            else:
                # between transactions: none of A's backends is inside one (a statement
                # sent just before the stop finishes on the server without A)
                deadline = time.monotonic() + 3
                while states := await a_in_transaction(cluster):
                    assert time.monotonic() < deadline, f"A holds a transaction: {states}"
                    await asyncio.sleep(0.02)

            # 2. the run is taken over by another node, within 1.5 lease times
            while True:
                run = (await api.call(cluster.others[0], "GET", f"/api/runs/{run_id}"))["run"]
                if run["status"] != "running":
                    break
                assert time.monotonic() - paused < 3 * LEASE_TTL_S, "never taken over"
                await asyncio.sleep(0.02)
            takeover = time.monotonic() - paused
            assert run["status"] == "failed" and run["error"] == "interrupted", run
            assert takeover <= 1.5 * LEASE_TTL_S, f"taken over after {takeover:.2f}s"

            # A stays paused well past the lease; the others keep writing meanwhile
            await asyncio.sleep(max(0.0, paused + 2 * LEASE_TTL_S - time.monotonic()))
            resumed = time.monotonic()
            stall = writes.stall(paused, resumed)
            during = sum(1 for _, b in writes.done if paused <= b <= resumed)
        finally:
            writes.stop.set()
            await asyncio.gather(*loops)

        # 3. A resumes and writes nothing: the head stays where the others left it
        quiet = await head(cluster)
        ended = await run_events(cluster, run_id)
        a.server.resume()
        await asyncio.sleep(0.5 * LEASE_TTL_S)  # A's pending append and its next one
        async with http.get(a.server.base_url + "/healthz") as resp:
            assert resp.status == 200  # A is alive and serving again
        await asyncio.sleep(0.5 * LEASE_TTL_S)
        assert await head(cluster) == quiet, "node A wrote after it resumed"
        assert await run_events(cluster, run_id) == ended
        assert ended[-1][1] == "run.failed"
        row = (await api.call(cluster.others[0], "GET", f"{S}/{sid}"))["session"]
        assert row["task_status"] is None

    where = "inside an append" if inside_append else "between transactions"
    report(
        request.config,
        f"pause {where}: other nodes' longest write {stall * 1000:.0f} ms while paused "
        f"({during} writes, {len(writes.failed)} failed; {before * 1000:.0f} ms before; bound "
        f"{bound.reserve_s * 1000:.0f} ms + a write), takeover {takeover:.2f} s = "
        f"{takeover / LEASE_TTL_S:.2f} leases (TTL {LEASE_TTL_S:g} s), A wrote 0 events "
        f"after SIGCONT",
    )
    assert during > 0, "the other nodes wrote nothing while A was paused"
    assert stall < STALL_LIMIT_S, f"other nodes stalled {stall:.2f}s"


async def test_a_node_paused_inside_an_append_stalls_nobody_and_writes_nothing_after(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    await pause_and_check(cluster, request, inside_append=True)


async def test_a_node_paused_between_transactions_stalls_nobody_and_writes_nothing_after(
    cluster: Cluster, request: pytest.FixtureRequest
) -> None:
    await pause_and_check(cluster, request, inside_append=False)
