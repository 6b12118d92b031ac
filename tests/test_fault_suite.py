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
from tests.faultkit.load import AckedTurn, Load, new_session
from tests.faultkit.subscribers import Subscriber, wait_caught_up
from tests.pg import throwaway_schema
from tests.torture.report import report

pytest.importorskip("asyncpg")
pytestmark = [pytest.mark.postgres, pytest.mark.timeout(3600)]

CI_FAULTS = 12
LEASE_S = 2.0
SHARED_SESSIONS = 6
CLIENTS = 6
STALL_S = 3.0  # a subscriber that hears nothing, not even a heartbeat, this long moves
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


def fault_kinds() -> tuple[str, ...]:
    """``SESSIONSTREAM_FAULT_KINDS=kill,pause`` injects only those, in turn."""
    chosen = tuple(k for k in os.environ.get("SESSIONSTREAM_FAULT_KINDS", "").split(",") if k)
    assert set(chosen) <= set(KINDS), f"fault kinds are {KINDS}"
    return chosen or KINDS


async def test_three_nodes_survive_kills_pauses_partitions_and_drops(
    schema: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    total = fault_count()
    seed = int(os.environ.get("SESSIONSTREAM_FAULTS_SEED", "") or 19)
    with cluster(schema, tmp_path, NODE_ENV) as nodes:
        async with aiohttp.ClientSession() as http:
            summary, failures, details = await run_faults(nodes, http, total, seed)
        print("\n".join(details))  # each fault, for -s
        for line in summary:
            report(request.config, line)
            print(line)
        assert not failures, "\n".join(failures) + "\n" + nodes.log_tail()


async def run_faults(
    nodes: Cluster, http: aiohttp.ClientSession, total: int, seed: int
) -> tuple[list[str], list[str], list[str]]:
    first = nodes.nodes[0]
    shared = [await new_session(http, first.base_url, nodes.token) for _ in range(SHARED_SESSIONS)]
    probes = [await new_session(http, first.base_url, nodes.token) for _ in nodes.nodes]
    runs = [await new_session(http, first.base_url, nodes.token) for _ in nodes.nodes]
    load = Load(nodes, http, shared, probes, clients=CLIENTS, seed=seed)
    subscribers = [Subscriber(nodes, http, sid, seed + i) for i, sid in enumerate(shared + runs)]

    def follow_run(turn: AckedTurn) -> None:
        subscriber = Subscriber(nodes, http, turn.run_id, seed, run_token=turn.token)
        subscribers.append(subscriber)
        subscriber.start(STALL_S)

    for subscriber in subscribers:
        subscriber.start(STALL_S)
    load.on_turn = follow_run
    load.start()
    injector = Injector(nodes, http, load, subscribers, runs, lease_s=LEASE_S, seed=seed)
    began = time.monotonic()
    kinds = fault_kinds()
    try:
        try:
            await asyncio.sleep(2)
            for n in range(total):
                kind = kinds[n % len(kinds)]
                victim = injector.rng.choice(nodes.nodes)
                await injector.inject(kind, victim)
                await asyncio.sleep(injector.rng.uniform(0.5, 1.5))
        finally:
            await load.stop()
        stuck = await settled(nodes)
        log = await checks.read_log(nodes.schema)
        heads = checks.session_heads(log, [s.key for s in subscribers if not s.is_run])
        await wait_caught_up(subscribers, heads, 30)
    finally:
        for subscriber in subscribers:
            await subscriber.stop()
    took = time.monotonic() - began
    summary, failures = summarize(nodes, injector, load, subscribers, log, stuck, took, seed)
    return summary, failures, fault_details(nodes, injector, load)


def fault_details(nodes: Cluster, injector: Injector, load: Load) -> list[str]:
    """One line a fault: how long, the slowest write of another node (when it was sent,
    from the fault's start), when the victim was back, the takeover."""
    lines = []
    for f in injector.faults:
        others = {n.index for n in nodes.others(nodes.nodes[f.victim])}
        slow = load.slowest_write(others, f.started, f.healed)
        stall = (
            f"{slow.took:.2f}s on n{slow.node} sent at {slow.sent - f.started:+.2f}s"
            if slow
            else "-"
        )
        back = f"+{f.back - f.started:.2f}s" if f.back else "-"
        takeover = f"{f.takeover_s:.2f}s" if f.takeover_s is not None else "-"
        lines.append(
            f"{f.kind:10} n{f.victim} {f.healed - f.started:5.2f}s back {back:7} "
            f"stall {stall:30} takeover {takeover} {f.run_outcome or ''}"
        )
    return lines


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
    stalls: dict[str, list[float]] = {k: [0.0] for k in KINDS}
    takeovers: dict[str, list[float]] = {}
    for f in faults:
        others = {n.index for n in nodes.others(nodes.nodes[f.victim])}
        stall = load.longest_write(others, f.started, f.healed)
        stalls[f.kind].append(stall)
        if f.takeover_s is not None:
            takeovers.setdefault(f.kind, []).append(f.takeover_s)
    longest_takeover = max((max(t) for t in takeovers.values()), default=0.0)
    normal = statistics.median(w.took for w in load.writes if w.ok)
    missed = wrong = 0
    for s in subscribers:
        m, w = checks.frame_errors(log, s.stream, s.frames)
        missed, wrong = missed + m, wrong + w
    duplicated = sum(s.duplicates for s in subscribers)
    refused = [f"{s.stream}: {r}" for s in subscribers for r in s.refusals]
    unended = [s.stream for s in subscribers if s.is_run and not s.done]
    acks = load.acks
    lines = [
        f"fault suite: {len(survived)}/{len(faults)} faults survived in {took:.0f}s "
        f"(seed {seed}, lease {LEASE_S:g}s): "
        + ", ".join(f"{k} {n}" for k in KINDS if (n := sum(f.kind == k for f in faults))),
        f"  acknowledged events lost: {len(lost)} "
        f"(of {len(acks.patches)} patches and {len(acks.turns)} turns acknowledged)",
        f"  events written by a node after it lost a lease: {len(stale)}",
        f"  longest stall of other nodes' writes: {max(max(v) for v in stalls.values()):.2f}s "
        f"(median write {normal * 1000:.0f} ms; by fault, longest/median: "
        + ", ".join(
            f"{k} {max(v):.2f}/{statistics.median(v[1:]):.2f}s"
            for k, v in stalls.items()
            if len(v) > 1
        )
        + ")",
        f"  duplicate terminal events: {len(doubled)}",
        f"  sessions left busy: {len(stuck)}",
        f"  longest takeover: {longest_takeover:.2f}s "
        f"({sum(f.takeover_s is not None for f in faults)} runs taken over; by fault, "
        "longest/median: "
        + ", ".join(f"{k} {max(t):.2f}/{statistics.median(t):.2f}s" for k, t in takeovers.items())
        + ")",
        f"  subscriber frames missed: {missed}, duplicated: {duplicated}, wrong: {wrong} "
        f"({sum(len(s.frames) for s in subscribers)} frames over "
        f"{sum(s.connections for s in subscribers)} connections of "
        f"{sum(not s.is_run for s in subscribers)} session and "
        f"{sum(s.is_run for s in subscribers)} run subscribers; "
        f"{sum(s.drops for s in subscribers)} dropped by the test; refused: {len(refused)})",
    ]
    failures: list[str] = []
    for name, problems in (
        ("acknowledged but lost", lost),
        ("written after the run's end", stale),
        ("ended twice", doubled),
        ("log shape", shape),
        ("left busy", stuck),
        ("subscribers refused", refused),
        ("run subscribers that never saw the end", unended),
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
