"""The faults themselves, one at a time on one node, each healed before the next.

Before a fault that should make the cluster take a node's runs over (kill,
pause, blackhole) the victim is given a run of its own, streaming, on a
session kept for it: the time from the fault to that run's end, as seen
through another node, is the takeover time. After every fault the victim
must serve a write again: that is what "survived" means.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp

from tests.faultkit.cluster import Cluster, Node
from tests.faultkit.load import Load
from tests.faultkit.subscribers import Subscriber
from tests.torture.harness import SESSIONS

KINDS = ("kill", "pause", "cut", "delay", "blackhole", "disconnect")
TAKEN_OVER = frozenset({"kill", "pause", "blackhole"})


@dataclass
class Fault:
    kind: str
    victim: int
    started: float
    healed: float = 0.0
    takeover_s: float | None = None  # None: no run of the victim's had to be taken over
    run_outcome: str | None = None
    survived: bool = False
    #: when the victim was back (restarted, resumed, reconnected), for reading a stall
    back: float = 0.0


class Injector:
    """Injects faults into ``cluster`` under ``load``, recording each one."""

    def __init__(
        self,
        cluster: Cluster,
        http: aiohttp.ClientSession,
        load: Load,
        subscribers: list[Subscriber],
        run_sessions: list[str],
        *,
        lease_s: float,
        seed: int,
    ) -> None:
        self.cluster = cluster
        self.http = http
        self.load = load
        self.subscribers = subscribers
        self.run_sessions = run_sessions
        self.lease_s = lease_s
        self.rng = random.Random(seed)
        self.faults: list[Fault] = []
        self.h = {"Authorization": f"Bearer {cluster.token}"}

    async def inject(self, kind: str, victim: Node) -> Fault:
        run_id = await self._victim_run(victim) if kind in TAKEN_OVER else None
        fault = Fault(kind, victim.index, time.monotonic())
        self.faults.append(fault)
        watch = asyncio.create_task(self._watch_run(run_id, victim, fault)) if run_id else None
        lease = self.lease_s
        if kind == "kill":
            victim.kill()
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            fault.back = time.monotonic()
            await victim.restart()
        elif kind == "pause":
            victim.pause()
            await asyncio.sleep(self.rng.uniform(2.0, 3.0) * lease)
            victim.resume()
        elif kind == "blackhole":
            victim.proxy.blackhole()
            await asyncio.sleep(self.rng.uniform(2.0, 3.0) * lease)
            victim.proxy.heal()
        elif kind == "cut":
            for _ in range(self.rng.randint(1, 3)):
                victim.proxy.cut()
                await asyncio.sleep(self.rng.uniform(0.1, 0.5))
        elif kind == "delay":
            victim.proxy.delay(self.rng.uniform(0.05, 0.3))
            await asyncio.sleep(self.rng.uniform(1.0, 2.0) * lease)
            victim.proxy.heal()
        elif kind == "disconnect":
            for subscriber in self.rng.sample(self.subscribers, max(1, len(self.subscribers) // 2)):
                subscriber.drop()
        else:
            raise ValueError(kind)
        fault.healed = time.monotonic()
        if watch is not None:
            await watch
        fault.survived = await self._serves_writes(victim)
        return fault

    async def _victim_run(self, victim: Node) -> str | None:
        """A turn started on ``victim`` and streaming; None if it could not start one."""
        sid = self.run_sessions[victim.index]
        url = f"{victim.base_url}{SESSIONS}/{sid}"
        deadline = time.monotonic() + 10 * self.lease_s
        while time.monotonic() < deadline:
            async with self.http.post(f"{url}/turn", json={"message": "hi"}, headers=self.h) as r:
                if r.status == 200:
                    started = await r.json()
                    self.load.record_turn(sid, started, victim)
                    break
                await r.read()  # 409 while the last probe run is still being ended
            await asyncio.sleep(0.1)
        else:
            return None
        run_id = str(started["runId"])
        while time.monotonic() < deadline:
            async with self.http.get(f"{victim.base_url}/api/runs/{run_id}", headers=self.h) as r:
                run = (await r.json())["run"]
            if run["status"] != "queued":
                return run_id if run["status"] == "running" else None
            await asyncio.sleep(0.02)
        return None

    async def _watch_run(self, run_id: str, victim: Node, fault: Fault) -> None:
        """Poll the run through the other nodes until it ends."""
        others = self.cluster.others(victim)
        deadline = fault.started + 60
        while time.monotonic() < deadline:
            node = self.rng.choice(others)
            try:
                async with self.http.get(
                    f"{node.base_url}/api/runs/{run_id}",
                    headers=self.h,
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as r:
                    run = (await r.json())["run"] if r.status == 200 else None
            except (aiohttp.ClientError, OSError, TimeoutError):
                run = None
            if run is not None and run["status"] not in ("queued", "running"):
                fault.run_outcome = f"{run['status']}:{run.get('error')}"
                if run["status"] == "failed":
                    fault.takeover_s = time.monotonic() - fault.started
                return
            await asyncio.sleep(0.05)
        fault.run_outcome = "never ended"

    async def _serves_writes(self, victim: Node) -> bool:
        timeout = aiohttp.ClientTimeout(total=10)
        deadline = time.monotonic() + 60
        sid = self.load.probe_sessions[victim.index]
        while time.monotonic() < deadline:
            try:
                if await self.load.patch(victim, sid, timeout):
                    return True
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
        return False
