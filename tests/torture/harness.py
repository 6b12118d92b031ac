"""The moving parts of the kill loop: clients that write, and the log they are checked against.

``Workers`` runs concurrent HTTP clients on their own thread and event loop:
PATCHes with a unique title (the acknowledged ones are recorded with the
ETag they returned), turns (recorded with their run token, handed to the
subscribers) and reads. A request cut off by a kill has an unknown outcome
and is simply not recorded; only what the server acknowledged must survive.
The main thread pauses the workers around each kill and restart, so the
checks after a restart see the state recovery left, not new work.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sessionstream.eventstore.packing import unpack_all
from sessionstream.eventstore.textcodec import decode

SESSIONS = "/api/campaigns/ai-chat-sessions"
TERMINAL = frozenset({"run.completed", "run.failed", "run.canceled"})
MESSAGES = (
    "Write an intro email for enterprise VPs of Sales about time-to-ROI",
    "We are Acme Analytics; proof: 30% faster pipeline reviews; CTA: a 15 minute call",
    "Make it shorter",
)


@dataclass(frozen=True, slots=True)
class AckedPatch:
    session_id: str
    title: str
    etag: int


@dataclass(frozen=True, slots=True)
class AckedTurn:
    session_id: str
    run_id: str
    token: str


@dataclass
class Acks:
    patches: list[AckedPatch] = field(default_factory=list)
    turns: list[AckedTurn] = field(default_factory=list)
    refused_busy: int = 0
    cut_off: int = 0


class Workers(threading.Thread):
    """``clients`` concurrent HTTP clients until ``stop()``; ``pause()``/``resume()`` between."""

    def __init__(
        self,
        base_url: str,
        token: str,
        sessions: list[str],
        *,
        clients: int,
        seed: int,
        on_turn: Callable[[AckedTurn], None],
    ) -> None:
        super().__init__(name="torture-workers", daemon=True)
        self.base_url = base_url
        self.token = token
        self.sessions = sessions
        self.clients = clients
        self.seed = seed
        self.on_turn = on_turn
        self.acks = Acks()
        self._running = threading.Event()
        self._stopping = threading.Event()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._counter = 0
        self.failure: BaseException | None = None

    # control, from the test's thread ------------------------------------------------
    def resume(self) -> None:
        self._running.set()

    def pause(self, timeout: float = 15.0) -> None:
        """Stop sending; return once no request is in flight."""
        self._running.clear()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._in_flight == 0:
                    return
            time.sleep(0.005)
        raise TimeoutError("workers did not settle")

    def stop(self) -> None:
        self._stopping.set()
        self._running.set()
        self.join(30)
        if self.failure is not None:
            raise self.failure

    # the clients --------------------------------------------------------------------
    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by stop()
            self.failure = exc

    async def _main(self) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession(self.base_url, timeout=timeout, headers=headers) as http:
            await asyncio.gather(*(self._client(http, n) for n in range(self.clients)))

    @contextmanager
    def _flight(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _client(self, http: aiohttp.ClientSession, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        while not self._stopping.is_set():
            if not self._running.is_set():
                await asyncio.sleep(0.005)
                continue
            sid = rng.choice(self.sessions)
            action = rng.choices(("patch", "turn", "read"), (6, 2, 2))[0]
            with self._flight():
                if not self._running.is_set():
                    continue
                try:
                    await getattr(self, action)(http, sid, rng)
                except (aiohttp.ClientError, OSError, TimeoutError):
                    self.acks.cut_off += 1
                    await asyncio.sleep(0.02)

    async def patch(self, http: aiohttp.ClientSession, sid: str, _rng: random.Random) -> None:
        with self._lock:
            self._counter += 1
            title = f"t{self.seed}-{self._counter}"
        async with http.patch(f"{SESSIONS}/{sid}", json={"title": title}) as r:
            if r.status == 200:
                etag = int(r.headers["ETag"].strip('"'))
                await r.read()
                self.acks.patches.append(AckedPatch(sid, title, etag))
            elif r.status >= 500:
                raise aiohttp.ClientError(f"PATCH {r.status}: {await r.text()}")

    async def turn(self, http: aiohttp.ClientSession, sid: str, rng: random.Random) -> None:
        body = {"message": rng.choice(MESSAGES)}
        async with http.post(f"{SESSIONS}/{sid}/turn", json=body) as r:
            if r.status == 200:
                started = await r.json()
                turn = AckedTurn(sid, started["runId"], started["publicAccessToken"])
                self.acks.turns.append(turn)
                self.on_turn(turn)
            elif r.status == 409:
                self.acks.refused_busy += 1
            elif r.status >= 500:
                raise aiohttp.ClientError(f"turn {r.status}: {await r.text()}")

    async def read(self, http: aiohttp.ClientSession, sid: str, _rng: random.Random) -> None:
        async with http.get(f"{SESSIONS}/{sid}") as r:
            await r.read()
            if r.status != 200:
                raise aiohttp.ClientError(f"GET {r.status}")


# the log, read-only -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Row:
    position: int
    stream_id: str
    version: int
    event_id: str
    type: str
    data: dict[str, Any]
    correlation_id: str | None


def read_log(db: Path) -> list[Row]:
    """Every event in the file, the rows and the finished runs' packed deltas alike.

    A pack is decoded by the documented format (``eventstore/packing.py``), so a
    compaction that dropped, moved or renumbered a delta shows as a gap here.
    """
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one snapshot: a compaction between two reads shows twice
        rows = [
            Row(r[0], r[1], r[2], r[3], r[4], json.loads(decode(r[5])), r[6])
            for r in conn.execute(
                "SELECT position, stream_id, version, event_id, type, data, correlation_id "
                "FROM events"
            )
        ]
        packed = unpack_all(conn.execute("SELECT stream_id, correlation_id, body FROM packs"))
    finally:
        conn.close()
    rows += [
        Row(e.position, e.stream_id, e.version, e.event_id, e.type, dict(e.data), e.correlation_id)
        for e in packed
    ]
    return sorted(rows, key=lambda row: row.position)


def read_docs(db: Path, kind: str) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {
            key: json.loads(decode(body))
            for key, body in conn.execute("SELECT key, body FROM docs WHERE kind = ?", (kind,))
        }
    finally:
        conn.close()


def check_log_shape(rows: list[Row]) -> None:
    """Positions gapless, ids unique, each stream's versions 1..n, at most one terminal a run."""
    assert [r.position for r in rows] == list(range(1, len(rows) + 1)), "positions have a gap"
    assert len({r.event_id for r in rows}) == len(rows), "an event id is stored twice"
    versions: dict[str, int] = {}
    terminals: dict[str, int] = {}
    for r in rows:
        expected = versions.get(r.stream_id, 0) + 1
        assert r.version == expected, f"{r.stream_id} jumps to version {r.version}"
        versions[r.stream_id] = r.version
        if r.type in TERMINAL:
            terminals[r.stream_id] = terminals.get(r.stream_id, 0) + 1
            assert terminals[r.stream_id] == 1, f"{r.stream_id} has two terminal events"


def check_acked(rows: list[Row], acks: Acks, upto_patches: int, upto_turns: int) -> int:
    """Every acknowledged append is in the log exactly once; returns how many were checked."""
    titles: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        if r.type == "session.patched" and "title" in r.data.get("fields", {}):
            titles.setdefault((r.stream_id, r.data["fields"]["title"]), []).append(r)
    for ack in acks.patches[:upto_patches]:
        found = titles.get((f"session-{ack.session_id}", ack.title), [])
        assert len(found) == 1, f"acknowledged PATCH {ack} is in the log {len(found)} times"
        assert found[0].version <= ack.etag, f"{ack} acknowledged before its event's version"
    created = {r.stream_id for r in rows if r.type == "run.created"}
    for turn in acks.turns[:upto_turns]:
        assert f"run-{turn.run_id}" in created, f"acknowledged turn {turn.run_id} is not logged"
    return upto_patches + upto_turns


def check_nothing_busy(db: Path) -> None:
    sessions = read_docs(db, "session")
    busy = {k: v["row"]["task_status"] for k, v in sessions.items() if v["row"]["task_status"]}
    assert not busy, f"sessions still busy after recovery: {busy}"
    runs = read_docs(db, "run")
    open_runs = {k: v["status"] for k, v in runs.items() if v["status"] in ("queued", "running")}
    assert not open_runs, f"runs without an end after recovery: {open_runs}"


# subscribers ------------------------------------------------------------------------------
class Subscribers(threading.Thread):
    """Session and run subscriptions through the Python client, across every restart.

    The client reconnects and resumes by itself; what each subscription
    received is compared with the log at the end: the same events, in log
    order, each exactly once.
    """

    def __init__(self, base_url: str, token: str, sessions: list[str]) -> None:
        super().__init__(name="torture-subscribers", daemon=True)
        self.base_url = base_url
        self.token = token
        self.sessions = sessions
        self.session_frames: dict[str, list[dict[str, Any]]] = {s: [] for s in sessions}
        self.run_frames: dict[str, list[dict[str, Any]]] = {}
        self.run_sessions: dict[str, str] = {}
        self.failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: asyncio.Event | None = None

    def start_and_wait(self) -> None:
        self.start()
        if not self._ready.wait(10):
            raise TimeoutError("subscriber loop did not start")

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.failure = exc

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        for sid in self.sessions:
            self._spawn(self._session(sid))
        self._ready.set()
        await self._done.wait()
        for task in list(self._tasks):
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

    def follow_run(self, turn: AckedTurn) -> None:
        """Called from the workers' thread for each acknowledged turn."""
        assert self._loop is not None
        self.run_sessions[turn.run_id] = turn.session_id
        self.run_frames[turn.run_id] = []
        self._loop.call_soon_threadsafe(self._spawn, self._run(turn))

    async def _session(self, sid: str) -> None:
        from sessionstream.client import stream_session

        frames = self.session_frames[sid]
        async for frame in stream_session(self.base_url, sid, self.token, after=0):
            frames.append(as_dict(frame))

    async def _run(self, turn: AckedTurn) -> None:
        from sessionstream.client import stream_run

        frames = self.run_frames[turn.run_id]
        async for frame in stream_run(self.base_url, turn.run_id, turn.token, after=0):
            frames.append(as_dict(frame))
            if frames[-1]["type"] in TERMINAL:
                return

    def runs_done(self) -> bool:
        return all(f and f[-1]["type"] in TERMINAL for f in self.run_frames.values())

    def stop(self) -> None:
        if self._loop is not None and self._done is not None:
            self._loop.call_soon_threadsafe(self._done.set)
        self.join(30)
        if self.failure is not None:
            raise self.failure


def as_dict(frame: Any) -> dict[str, Any]:
    if isinstance(frame, dict):
        return frame
    if hasattr(frame, "_asdict"):
        return dict(frame._asdict())
    from dataclasses import asdict, is_dataclass

    if is_dataclass(frame) and not isinstance(frame, type):
        return asdict(frame)
    return dict(vars(frame))


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {within}s waiting for {what}")
