"""What runs against the formation while it fails over, each on its own thread and loop.

``Load`` is the clients of two sessionstream nodes: PATCHes, turns and reads
spread over both, every answer recorded with its wall-clock time (the log's
``recorded_at`` is compared with it), plus one pinger a node that PATCHes a
session of its own every ``PING_S``, so the first write sessionstream takes
after a failover is seen to within a fraction of a second whatever the
other clients are stuck in. A request cut off by a timeout has an unknown
outcome and is recorded as such; only what was acknowledged must survive.

``WriteProbe`` writes straight to each PostgreSQL node, bypassing
sessionstream, to tell when the database itself took writes again: the
baseline the test holds sessionstream's own recovery against.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import asyncpg

from sessionstream.client import StreamRefused
from tests.torture.harness import MESSAGES, SESSIONS, TERMINAL, AckedPatch, AckedTurn, Subscribers

PING_S = 0.2
PING_TIMEOUT_S = 3.0
#: a load request's client-side timeout: long enough for a failover's queued writes to
#: commit once storage is back, short enough that a hung request is retried
REQUEST_TIMEOUT_S = 15.0
PROBE_TABLE = "failover_probe.writes"


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's fate. ``status`` 0: no HTTP answer (client timeout or connection error)."""

    started: float
    ended: float
    node: int
    action: str
    status: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class TimedPatch:
    ack: AckedPatch
    at: float


@dataclass
class Record:
    answers: list[Answer] = field(default_factory=list)
    patches: list[TimedPatch] = field(default_factory=list)
    turns: list[AckedTurn] = field(default_factory=list)


class Load(threading.Thread):
    def __init__(
        self,
        nodes: list[str],
        token: str,
        sessions: list[str],
        ping_sessions: list[str],
        *,
        clients_per_node: int,
        on_turn: Callable[[int, AckedTurn], None],
        seed: int = 22,
    ) -> None:
        super().__init__(name="failover-load", daemon=True)
        self.nodes = nodes
        self.token = token
        self.sessions = sessions
        self.ping_sessions = ping_sessions
        self.clients_per_node = clients_per_node
        self.on_turn = on_turn
        self.seed = seed
        self.record = Record()
        self.failure: BaseException | None = None
        self._stopping = threading.Event()
        self._counter = 0

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by stop()
            self.failure = exc

    def stop(self) -> None:
        self._stopping.set()
        self.join(REQUEST_TIMEOUT_S + 15)
        if self.failure is not None:
            raise self.failure

    def last_ack(self) -> float:
        patches = self.record.patches
        return patches[-1].at if patches else 0.0

    async def _main(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            clients = [
                self._client(http, node, n)
                for node in range(len(self.nodes))
                for n in range(self.clients_per_node)
            ]
            pingers = [self._pinger(http, node) for node in range(len(self.nodes))]
            await asyncio.gather(*clients, *pingers)

    async def _client(self, http: aiohttp.ClientSession, node: int, n: int) -> None:
        rng = random.Random(self.seed * 1000 + node * 100 + n)
        while not self._stopping.is_set():
            sid = rng.choice(self.sessions)
            action = rng.choices(("patch", "turn", "read"), (6, 2, 2))[0]
            await self._request(http, node, action, sid, REQUEST_TIMEOUT_S)
            await asyncio.sleep(rng.uniform(0.02, 0.08))

    async def _pinger(self, http: aiohttp.ClientSession, node: int) -> None:
        while not self._stopping.is_set():
            began = time.monotonic()
            await self._request(http, node, "patch", self.ping_sessions[node], PING_TIMEOUT_S)
            await asyncio.sleep(max(0.0, PING_S - (time.monotonic() - began)))

    async def _request(
        self, http: aiohttp.ClientSession, node: int, action: str, sid: str, limit_s: float
    ) -> None:
        base = self.nodes[node]
        started = time.time()
        status, detail = 0, ""
        try:
            async with asyncio.timeout(limit_s):
                if action == "patch":
                    status, detail = await self._patch(http, base, sid)
                elif action == "turn":
                    status, detail = await self._turn(http, base, node, sid)
                else:
                    async with http.get(f"{base}{SESSIONS}/{sid}") as r:
                        status, detail = r.status, await _detail(r)
        except TimeoutError:
            detail = "client timeout"
        except (aiohttp.ClientError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.05)
        self.record.answers.append(Answer(started, time.time(), node, action, status, detail))

    async def _patch(self, http: aiohttp.ClientSession, base: str, sid: str) -> tuple[int, str]:
        self._counter += 1
        title = f"fo-{self._counter}"
        async with http.patch(f"{base}{SESSIONS}/{sid}", json={"title": title}) as r:
            if r.status == 200:
                etag = int(r.headers["ETag"].strip('"'))
                await r.read()
                self.record.patches.append(TimedPatch(AckedPatch(sid, title, etag), time.time()))
                return 200, ""
            return r.status, await _detail(r)

    async def _turn(
        self, http: aiohttp.ClientSession, base: str, node: int, sid: str
    ) -> tuple[int, str]:
        body = {"message": random.choice(MESSAGES)}
        async with http.post(f"{base}{SESSIONS}/{sid}/turn", json=body) as r:
            if r.status == 200:
                started = await r.json()
                turn = AckedTurn(sid, started["runId"], started["publicAccessToken"])
                self.record.turns.append(turn)
                self.on_turn(node, turn)
                return 200, ""
            return r.status, await _detail(r)


async def _detail(r: aiohttp.ClientResponse) -> str:
    """An error answer's code and message, or the start of its body."""
    if r.status < 300:
        await r.read()
        return ""
    text = await r.text()
    retry_after = r.headers.get("Retry-After")
    suffix = f" (Retry-After: {retry_after})" if retry_after is not None else ""
    return text[:300] + suffix


class Followers(Subscribers):
    """The kill loop's subscribers, except that a channel the server refuses (a cursor past
    the end of a run, 4409) is recorded and given up rather than ending every channel:
    the comparison with the log afterwards says what each one missed."""

    def __init__(self, base_url: str, token: str, sessions: list[str]) -> None:
        super().__init__(base_url, token, sessions)
        self.refused: dict[str, str] = {}

    async def _session(self, sid: str) -> None:
        try:
            await super()._session(sid)
        except StreamRefused as exc:
            self.refused[sid] = str(exc)

    async def _run(self, turn: AckedTurn) -> None:
        try:
            await super()._run(turn)
        except StreamRefused as exc:
            self.refused[turn.run_id] = str(exc)

    def runs_done(self) -> bool:
        return all(
            run_id in self.refused or (f and f[-1]["type"] in TERMINAL)
            for run_id, f in self.run_frames.items()
        )


class WriteProbe(threading.Thread):
    """A committed INSERT into ``PROBE_TABLE`` on each node every ``interval_s``.

    Each node has its own task, so a frozen one cannot delay the others; each
    attempt is bounded by ``timeout_s``, connecting included, and a failed
    attempt drops its connection. ``successes[name]`` holds the wall-clock
    times at which a write committed there.
    """

    def __init__(
        self, ports: dict[str, int], *, interval_s: float = 0.1, timeout_s: float = 1.0
    ) -> None:
        super().__init__(name="failover-probe", daemon=True)
        self.ports = ports
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.successes: dict[str, list[float]] = {name: [] for name in ports}
        self._stopping = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.failure = exc

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)
        if self.failure is not None:
            raise self.failure

    def first_write(self, name: str, after: float) -> float | None:
        return next((t for t in self.successes[name] if t >= after), None)

    async def _main(self) -> None:
        await asyncio.gather(*(self._node(name, port) for name, port in self.ports.items()))

    async def _node(self, name: str, port: int) -> None:
        conn: asyncpg.Connection | None = None
        while not self._stopping.is_set():
            try:
                async with asyncio.timeout(self.timeout_s):
                    if conn is None:
                        conn = await asyncpg.connect(
                            host="127.0.0.1", port=port, user="postgres", database="sessionstream"
                        )
                    await conn.execute(f"INSERT INTO {PROBE_TABLE} (at) VALUES (now())")
                self.successes[name].append(time.time())
            except Exception:  # whatever the driver raised, this attempt did not write
                if conn is not None:
                    conn.terminate()
                    conn = None
            await asyncio.sleep(self.interval_s)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()
