"""Three nodes on one PostgreSQL under load, hit by one fault after another.

Three real ``sessionstream serve`` nodes share a throwaway schema, each
reaching PostgreSQL through its own relay (``tests/faultkit/proxy.py``).
Clients patch, start turns and read on every node; one probe per node
measures its writes; subscribers follow sessions over websockets and hop
nodes when theirs fails. Faults, one at a time on a random node, each healed
before the next: SIGKILL then restart, SIGSTOP for two to three lease times
then SIGCONT, the node's database link cut, delayed or blackholed for longer
than the lease, and subscribers' connections dropped.

Afterwards the log is read straight from PostgreSQL and the suite prints
(and asserts, where the answer must be 0): faults survived, acknowledged
events lost, events a run wrote after its end (a node that lost its lease),
the longest stall of the other nodes' writes during a fault, duplicate
terminal events, sessions left busy, the longest takeover, and frames
subscribers missed or got twice.

``SESSIONSTREAM_FAULTS=60`` runs 60 faults instead of the CI's
:data:`CI_FAULTS`; ``SESSIONSTREAM_FAULTS_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sessionstream.eventstore.model import RecordedEvent
from tests.faultkit import checks
from tests.faultkit.cluster import Cluster, cluster
from tests.faultkit.faults import KINDS, TAKEN_OVER, Injector
from tests.faultkit.load import Load, new_session
from tests.faultkit.subscribers import Subscriber, wait_caught_up
from tests.pg import throwaway_schema
from tests.torture.report import report

pytest.importorskip("asyncpg")
pytestmark = [pytest.mark.postgres, pytest.mark.timeout(3600)]

CI_FAULTS = 12
LEASE_S = 2.0
SHARED_SESSIONS = 6
CLIENTS = 6
NODE_ENV = {
    "SESSIONSTREAM_LEASE_TTL_S": str(LEASE_S),
    "SESSIONSTREAM_OFFLINE_PACE_MS": "30",
    "SESSIONSTREAM_DELIVERY_HEARTBEAT_S": "0.5",
}


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_faultsuite"):
        yield name


def fault_count() -> int:
    return int(os.environ.get("SESSIONSTREAM_FAULTS", "") or CI_FAULTS)


async def test_three_nodes_survive_kills_pauses_partitions_and_drops(
    schema: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    total = fault_count()
    seed = int(os.environ.get("SESSIONSTREAM_FAULTS_SEED", "") or 19)
    with cluster(schema, tmp_path, NODE_ENV) as nodes:
        async with aiohttp.ClientSession() as http:
            summary, failures = await run_faults(nodes, http, total, seed)
        for line in summary:
            report(request.config, line)
            print(line)
        assert not failures, "\n".join(failures) + "\n" + nodes.log_tail()


async def run_faults(
    nodes: Cluster, http: aiohttp.ClientSession, total: int, seed: int
) -> tuple[list[str], list[str]]:
    first = nodes.nodes[0]
    shared = [await new_session(http, first.base_url, nodes.token) for _ in range(SHARED_SESSIONS)]
    probes = [await new_session(http, first.base_url, nodes.token) for _ in nodes.nodes]
    runs = [await new_session(http, first.base_url, nodes.token) for _ in nodes.nodes]
    load = Load(nodes, http, shared, probes, clients=CLIENTS, seed=seed)
    subscribers = [Subscriber(nodes, http, sid, seed + i) for i, sid in enumerate(shared + runs)]
    for subscriber in subscribers:
        subscriber.start(stall_s=3.0)
    load.start()
    injector = Injector(nodes, http, load, subscribers, runs, lease_s=LEASE_S, seed=seed)
    began = time.monotonic()
    try:
        try:
            await asyncio.sleep(2)
            for n in range(total):
                kind = KINDS[n % len(KINDS)]
                victim = injector.rng.choice(nodes.nodes)
                await injector.inject(kind, victim)
                await asyncio.sleep(injector.rng.uniform(0.5, 1.5))
        finally:
            await load.stop()
        stuck = await settled(nodes)
        log = await checks.read_log(nodes.schema)
        heads = checks.session_heads(log, [s.sid for s in subscribers])
        await wait_caught_up(subscribers, heads, 30)
    finally:
        for subscriber in subscribers:
            await subscriber.stop()
    took = time.monotonic() - began
    return summarize(nodes, injector, load, subscribers, log, stuck, took, seed)


async def settled(nodes: Cluster) -> list[str]:
    """Once every run has ended and freed its session: nothing. After ten lease times: what
    is still busy."""
    deadline = time.monotonic() + 10 * LEASE_S
    while True:
        stuck = checks.busy(
            await checks.read_docs(nodes.schema, "session"),
            await checks.read_docs(nodes.schema, "run"),
        )
        if not stuck or time.monotonic() > deadline:
            return stuck
        await asyncio.sleep(0.2)


def summarize(
    nodes: Cluster,
    injector: Injector,
    load: Load,
    subscribers: list[Subscriber],
    log: list[RecordedEvent],
    stuck: list[str],
    took: float,
    seed: int,
) -> tuple[list[str], list[str]]:
    faults = injector.faults
    survived = [f for f in faults if f.survived]
    lost = checks.acked_lost(log, load.acks.patches, load.acks.turns)
    stale = checks.writes_after_end(log)
    doubled = checks.duplicate_terminals(log)
    shape = checks.shape_errors(log)
    stalls: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    takeovers: dict[str, float] = {}
    for f in faults:
        others = {n.index for n in nodes.others(nodes.nodes[f.victim])}
        stall = load.longest_write(others, f.started, f.healed)
        stalls[f.kind] = max(stalls[f.kind], stall)
        if f.takeover_s is not None:
            takeovers[f.kind] = max(takeovers.get(f.kind, 0.0), f.takeover_s)
    normal = statistics.median(w.took for w in load.writes if w.ok)
    missed = wrong = 0
    for s in subscribers:
        m, w = checks.frame_errors(log, s.sid, s.frames)
        missed, wrong = missed + m, wrong + w
    duplicated = sum(s.duplicates for s in subscribers)
    acks = load.acks
    lines = [
        f"fault suite: {len(survived)}/{len(faults)} faults survived in {took:.0f}s "
        f"(seed {seed}, lease {LEASE_S:g}s): "
        + ", ".join(f"{k} {sum(f.kind == k for f in faults)}" for k in KINDS),
        f"  acknowledged events lost: {len(lost)} "
        f"(of {len(acks.patches)} patches and {len(acks.turns)} turns acknowledged)",
        f"  events written by a node after it lost a lease: {len(stale)}",
        f"  longest stall of other nodes' writes: {max(stalls.values()):.2f}s "
        f"(median write {normal * 1000:.0f} ms; by fault: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in stalls.items())
        + ")",
        f"  duplicate terminal events: {len(doubled)}",
        f"  sessions left busy: {len(stuck)}",
        f"  longest takeover: {max(takeovers.values(), default=0.0):.2f}s "
        f"({sum(f.takeover_s is not None for f in faults)} runs taken over; by fault: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in takeovers.items())
        + ")",
        f"  subscriber frames missed: {missed}, duplicated: {duplicated}, wrong: {wrong} "
        f"({sum(len(s.frames) for s in subscribers)} frames over "
        f"{sum(s.connections for s in subscribers)} connections)",
    ]
    failures: list[str] = []
    for name, problems in (
        ("acknowledged but lost", lost),
        ("written after the run's end", stale),
        ("ended twice", doubled),
        ("log shape", shape),
        ("left busy", stuck),
    ):
        if problems:
            failures.append(f"{name}: {problems[:10]}")
    if len(survived) != len(faults):
        failures.append(f"not survived: {[f for f in faults if not f.survived]}")
    if missed or duplicated or wrong:
        failures.append(f"subscribers: {missed} missed, {duplicated} duplicated, {wrong} wrong")
    never = [f for f in faults if f.kind in TAKEN_OVER and f.run_outcome == "never ended"]
    if never:
        failures.append(f"runs never taken over: {never}")
    return lines, failures
