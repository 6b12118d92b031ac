"""Token latency as the user perceives it: the provider's token to the subscriber.

Three processes on one host (``perf_counter`` is one monotonic clock for all):

- the **provider**: the fake OpenAI-compatible or Anthropic server of the
  tests (``tests/fake_openai.py``, ``tests/fake_anthropic.py``) streaming
  ``tokens`` marked tokens ``pace`` apart; each token's text is the moment the
  provider sent it. Runs start together on ``/bench/go``, each after a random
  part of one pace, so they do not tick in lockstep;
- the **server**: ``create_app`` with the real engine (``openai`` or
  ``anthropic`` SDK) pointed at the provider, uvloop, SQLite, as
  ``sessionstream serve`` runs it. It notes when each token passed each stage;
- **this process**: every subscriber, a real websocket on its run's channel
  (``bench/stream_lean.py``, or aiohttp's client with ``--receiver aiohttp``).

The stages of one token, each measured from the end of the one before:

=============  =====================================================================
``engine``     provider sent it -> the run loop has it (socket, SDK, read loop)
``coalesce``   -> its delta is handed to the writer's queue (``services/coalesce.py``)
``queue``      -> the writer takes the batch holding it (``eventstore/groupcommit.py``)
``commit``     -> committed and published to the hub (``eventstore/sqlite/``)
``fanout``     -> a subscriber has the frame (``server/fanout.py``, sockets, its loop)
=============  =====================================================================

``total`` is provider -> subscriber, per token and subscriber. Storage: per
reply, the ``message.delta`` count and their bytes as rows (before compaction,
counted as ``bench/scale_measure.py`` counts a row) and as packs (after).
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import itertools
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import stream_lean
from bench.common import install_uvloop
from bench.stream_clients import (
    connect_all,
    drain,
    measuring,
    pct,
    raise_fd_limit,
    start_runs,
)
from bench.stream_server import bench_settings
from sessionstream.engines.base import ExampleInput, ExampleResult, StreamItem, TextDelta, TurnInput
from sessionstream.eventstore.groupcommit import Pending
from sessionstream.eventstore.hashcodec import encode_hash
from sessionstream.eventstore.model import AppendRequest, AppendResult, RecordedEvent

STAGES = ("engine", "coalesce", "queue", "commit", "fanout")
PROVIDERS = ("openai", "anthropic")
#: the processes whose CPU a round splits (cores used over its measured window)
CORES = ("provider", "server", "server_loop", "subscribers", "others")


# the provider process ----------------------------------------------------------------------------
def provider_main(pipe: Connection, provider: str, tokens: int, pace_s: float) -> None:
    install_uvloop()
    asyncio.run(_provide(pipe, provider, tokens, pace_s))


async def _provide(pipe: Connection, provider: str, tokens: int, pace_s: float) -> None:
    """The tests' fake provider, each request held until ``/bench/go`` and then staggered."""
    gate = asyncio.Event()
    if provider == "openai":
        from tests import fake_openai

        openai_fake = fake_openai.FakeOpenAI()
        reply = fake_openai.Reply("x" * tokens, piece=1, pace_s=pace_s, stamped=True)
        openai_fake.script(*[reply] * 10_000)
        handler, suffix = openai_fake.handle, "/v1"
    else:
        from tests import fake_anthropic

        anthropic_fake = fake_anthropic.FakeAnthropic()
        answer = fake_anthropic.Reply("x" * tokens, piece=1, pace_s=pace_s, stamped=True)
        anthropic_fake.script(*[answer] * 10_000)
        handler, suffix = anthropic_fake.messages, ""

    warm = [1]  # the first request is the warm-up turn's: it is not held

    async def gated(request: web.Request) -> web.StreamResponse:
        if warm:
            warm.pop()
            return await handler(request)
        await gate.wait()
        await asyncio.sleep(random.uniform(0, pace_s))
        return await handler(request)

    async def go(request: web.Request) -> web.Response:
        gate.set()
        return web.json_response({"ok": True})

    routes = web.Application()
    routes.router.add_post("/bench/go", go)
    routes.router.add_post("/v1/chat/completions", gated)
    routes.router.add_post("/v1/messages", gated)
    runner = web.AppRunner(routes, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    pipe.send(f"http://127.0.0.1:{port}{suffix}")
    await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "stop"
    await runner.cleanup()


# the server process ------------------------------------------------------------------------------
@dataclass
class Marks:
    """When each token (by its stamp) passed each stage in the server, and its position."""

    engine: dict[str, float] = field(default_factory=dict)
    submitted: dict[str, float] = field(default_factory=dict)
    taken: dict[str, float] = field(default_factory=dict)
    published: dict[str, float] = field(default_factory=dict)


def stamps_of(requests: Iterable[AppendRequest]) -> list[str]:
    return [
        s
        for r in requests
        for e in r.events
        if e.type == "message.delta"
        for s in str(e.data.get("text", "")).split()
    ]


class StagedEngine:
    """The real engine, with the moment the run loop gets each token noted."""

    def __init__(self, inner: Any, marks: Marks) -> None:
        self.inner = inner
        self.marks = marks
        self.name = inner.name
        self.model = inner.model

    async def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        clock, engine = time.perf_counter, self.marks.engine
        stream = self.inner.turn(inp)
        try:
            async for item in stream:
                if isinstance(item, TextDelta):
                    now = clock()
                    for stamp in item.text.split():
                        engine[stamp] = now
                yield item
        finally:
            await stream.aclose()

    async def example(self, inp: ExampleInput) -> ExampleResult:
        raise RuntimeError("bench.stream measures chat turns")

    async def aclose(self) -> None:
        await self.inner.aclose()


def instrument(store: Any, marks: Marks) -> None:
    """Note the queue's hand-in, the writer's take and the hub's publish of each token."""
    commits, hub = store.commits, store.hub
    submit, next_batch, publish = commits.submit, commits.next_batch, hub.publish
    clock = time.perf_counter

    async def timed_submit(requests: Sequence[AppendRequest]) -> list[AppendResult]:
        now = clock()
        for stamp in stamps_of(requests):
            marks.submitted[stamp] = now
        result: list[AppendResult] = await submit(requests)
        return result

    async def timed_next_batch() -> list[Pending]:
        batch: list[Pending] = await next_batch()
        now = clock()
        for item in batch:
            for stamp in stamps_of(item.requests):
                marks.taken[stamp] = now
        return batch

    def timed_publish(events: Iterable[RecordedEvent]) -> None:
        batch = list(events)
        now = clock()
        for event in batch:
            if event.type == "message.delta":
                for stamp in str(event.data.get("text", "")).split():
                    marks.published[stamp] = now
        publish(batch)

    commits.submit = timed_submit
    commits.next_batch = timed_next_batch
    hub.publish = timed_publish


#: set to a file path, the server process profiles its measured window (``cProfile``,
#: the main thread's CPU time) and writes the stats there: for finding where the CPU
#: goes (the profile's own cost distorts the latencies of that round)
PROFILE_VAR = "BENCH_TOKENS_PROFILE"


class GcTime:
    """The time the server's garbage collector took, and its longest pause, by generation."""

    def __init__(self) -> None:
        self.started = 0.0
        self.total = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        took, gen = time.perf_counter() - self.started, info["generation"]
        self.total[gen] += took
        self.count[gen] += 1
        self.longest[gen] = max(self.longest[gen], took)

    def reset(self) -> None:
        self.total, self.longest, self.count = [0.0] * 3, [0.0] * 3, [0] * 3

    def report(self) -> dict[str, float]:
        """Since the last reset: collections, their seconds, the longest pause (ms)."""
        return {
            "gc_collections": float(sum(self.count)),
            "gc_s": sum(self.total),
            "gc_longest_ms": max(self.longest) * 1000,
        }


def server_main(pipe: Connection, provider: str, base_url: str) -> None:
    # a slower machine, emulated: the server alone joins a CPU-capped cgroup (v1 ``cpu``
    # controller: ``cfs_quota_us`` of ``cfs_period_us``) that the caller set up
    if cgroup := os.environ.get("BENCH_SERVER_CGROUP"):
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    install_uvloop()
    raise_fd_limit()
    asyncio.run(_serve(pipe, provider, base_url))


async def _serve(pipe: Connection, provider: str, base_url: str) -> None:
    from sessionstream.server.app import create_app, settle_gc
    from sessionstream.server.keys import STORE
    from sessionstream.services.accounts import create_user

    tmp = tempfile.mkdtemp(prefix="bench-tokens-")
    db = str(Path(tmp) / "tokens.db")
    settings = bench_settings(db)
    inner: Any
    if provider == "openai":
        from sessionstream.engines.openai_engine import OpenAIEngine

        inner = OpenAIEngine(model="fake-model", base_url=base_url, timeout_s=3600.0)
    else:
        from sessionstream.engines.anthropic_engine import AnthropicEngine

        inner = AnthropicEngine(
            model="claude-fake-1", base_url=base_url, api_key="bench", timeout_s=3600.0
        )
    marks = Marks()
    app = create_app(settings, engine=StagedEngine(inner, marks))

    collecting = GcTime()
    gc.callbacks.append(collecting)
    profile_to = os.environ.get(PROFILE_VAR)
    profile = cProfile.Profile(time.thread_time) if profile_to else None
    asked: list[float] = []

    async def cpu(request: web.Request) -> web.Response:
        """This process's CPU seconds so far, every thread's (the writer's too); asked
        before and after the measured window, which a profile (if any) covers."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        asked.append(usage.ru_utime + usage.ru_stime)
        if len(asked) == 1:
            collecting.reset()  # the measured window's collections only
        if profile is not None and profile_to and len(asked) == 1:
            profile.enable()
        elif profile is not None and profile_to and len(asked) == 2:
            profile.disable()
            profile.dump_stats(profile_to)
        return web.json_response({"cpu_s": asked[-1], "gc": collecting.report()})

    async def settled(request: web.Request) -> web.Response:
        """Wait (at most 60 s) until ``n`` subscribers are on their run's fan-out: caught
        up and live, so the measured window holds no subscriber's catch-up reads."""
        from sessionstream.server.realtime import REALTIME

        fanouts, want = app[REALTIME].fanouts, int(request.query["n"])
        deadline = time.monotonic() + 60.0
        while (joined := sum(len(f.members) for f in fanouts.values())) < want:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        return web.json_response({"joined": joined})

    app.router.add_get("/bench/cpu", cpu)
    app.router.add_get("/bench/settled", settled)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    settle_gc()  # as ``sessionstream serve`` does once it has started
    instrument(app[STORE], marks)
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    _user, token = await create_user(app[STORE], "bench")
    pipe.send((runner.addresses[0][1], token))
    runs: list[str] = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
    await runner.cleanup()  # closing the store packs what is left to pack
    stored = storage(db, runs)
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.send((marks, stored))


# storage ----------------------------------------------------------------------------------------
def row_bytes(e: RecordedEvent) -> int:
    """An event's stored bytes as a row, counted as ``bench/scale_measure.py`` counts them."""
    data, metadata = e.encoded or (json.dumps(e.data), json.dumps(e.metadata))
    texts = (e.stream_id, e.event_id, e.type, data, metadata, e.correlation_id or "")
    return sum(len(t) for t in texts) + len(e.recorded_at) + len(encode_hash(e.hash))


def storage(db: str, runs: Sequence[str]) -> dict[str, float]:
    """Per reply: its deltas, and the bytes of the events packed with them, as rows
    (before compaction) and as packs (after); and what the run's stream keeps in all
    (its packs and the rows left beside them), which a change to what is packed
    cannot move from one column to the other."""
    from sessionstream.eventstore.packing import unpack

    conn = sqlite3.connect(db)
    try:
        streams = [f"run-{r}" for r in runs]
        marks = ",".join("?" * len(streams))
        packs = conn.execute(
            f"SELECT stream_id, correlation_id, body FROM packs WHERE stream_id IN ({marks})",
            streams,
        ).fetchall()
        (rows_left,) = conn.execute(
            f"SELECT COUNT(*) FROM events WHERE type = 'message.delta' AND stream_id IN ({marks})",
            streams,
        ).fetchone()
        # counted as ``row_bytes`` counts a row
        (kept_rows,) = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(stream_id) + LENGTH(event_id) + LENGTH(type)"
            " + LENGTH(data) + LENGTH(metadata) + COALESCE(LENGTH(correlation_id), 0)"
            f" + LENGTH(recorded_at) + LENGTH(hash)), 0) FROM events WHERE stream_id IN ({marks})",
            streams,
        ).fetchone()
    finally:
        conn.close()
    # a finished run is packed whole (its deltas and the events between them), so the
    # pack is weighed against the rows of everything it replaced, and the deltas counted
    packed = [e for stream_id, corr, body in packs for e in unpack(stream_id, corr, bytes(body))]
    deltas = [e for e in packed if e.type == "message.delta"]
    replies = max(1, len(runs))
    return {
        "deltas_per_reply": len(deltas) / replies,
        "bytes_before_compaction": sum(row_bytes(e) for e in packed) / replies,
        "bytes_after_compaction": sum(len(body) for _, _, body in packs) / replies,
        "run_bytes_kept": (sum(len(body) for _, _, body in packs) + kept_rows) / replies,
        "delta_rows_left": float(rows_left),
    }


# this process: one round -------------------------------------------------------------------------
class Processes:
    """The provider and the server, started for one round and stopped after it."""

    def __init__(self, provider: str, tokens: int, pace_s: float) -> None:
        ctx = mp.get_context("spawn")
        self._ppipe, child = ctx.Pipe()
        self._provider = ctx.Process(
            target=provider_main, args=(child, provider, tokens, pace_s), daemon=True
        )
        self._provider.start()
        if not self._ppipe.poll(60):
            raise RuntimeError("the fake provider did not start")
        self.provider_url: str = self._ppipe.recv()
        self._spipe, child = ctx.Pipe()
        self._server = ctx.Process(
            target=server_main, args=(child, provider, self.provider_url), daemon=True
        )
        self._server.start()
        if not self._spipe.poll(60):
            raise RuntimeError("the bench server did not start")
        self.port, self.token = self._spipe.recv()
        self.provider_pid = self._provider.pid or 0
        self.server_pid = self._server.pid or 0

    def finish(self, runs: list[str]) -> tuple[Marks, dict[str, float]]:
        self._spipe.send(runs)
        if not self._spipe.poll(120):
            raise RuntimeError("the bench server did not report")
        marks, stored = self._spipe.recv()
        self._ppipe.send("stop")
        for proc in (self._server, self._provider):
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        return marks, stored

    def client(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {self.token}"},
            connector=aiohttp.TCPConnector(limit=0),
        )


async def token_round(
    provider: str, runs: int, subscribers: int, tokens: int, pace_s: float, receiver: str = "lean"
) -> dict[str, Any]:
    procs = Processes(provider, tokens, pace_s)
    started: list[tuple[str, str]] = []
    try:
        async with procs.client() as http:
            await warm_up(http)
            started = await start_runs(http, runs)
            targets = [run for run in started for _ in range(subscribers)]
            if receiver == "lean":
                subs = await stream_lean.connect_all(procs.port, targets, ready=2)
                count = len(subs)
            else:
                sockets = await connect_all(http, targets, ready=2)  # run.created, run.started
                texts: list[list[tuple[float, str]]] = [[] for _ in sockets]
                count = len(sockets)
            async with http.get("/bench/settled", params={"n": str(count)}) as r:
                joined = (await r.json())["joined"]
            split = CpuSplit({"provider": procs.provider_pid, "server": procs.server_pid})
            cpu_before, _ = await server_cpu(http)
            with measuring():
                async with aiohttp.ClientSession() as plain:
                    split.begin()
                    await plain.post(procs.provider_url.removesuffix("/v1") + "/bench/go")
                if receiver == "lean":
                    await asyncio.gather(*(sub.closed for sub in subs))
                else:
                    drains = (drain(ws, out) for ws, out in zip(sockets, texts, strict=True))
                    await asyncio.gather(*drains)
                cores = split.end()
            cpu_after, collected = await server_cpu(http)
            cpu_s = cpu_after - cpu_before
            received: list[list[tuple[float, str | bytes]]] = (
                [list(sub.frames) for sub in subs]
                if receiver == "lean"
                else [list(out) for out in texts]
            )
    finally:
        marks, stored = procs.finish([run_id for run_id, _ in started])
    result = {**figures(marks, received, runs * subscribers * tokens, tokens), **stored}
    result["server_cpu_us_per_token"] = cpu_s / (runs * tokens) * 1e6
    result["subscribers_live_at_start"] = joined / count
    return result | cores | collected


async def warm_up(http: aiohttp.ClientSession) -> None:
    """One whole turn before the measured ones: what a server does once (the SDK builds
    its types on its first reply, every code path is imported) is no token's latency."""
    warm = await start_runs(http, 1)
    (ws,) = await connect_all(http, warm, ready=2)
    await drain(ws, [])


async def server_cpu(http: aiohttp.ClientSession) -> tuple[float, dict[str, float]]:
    """The server's CPU seconds so far, and its collector's work since the last ask."""
    async with http.get("/bench/cpu") as r:
        body = await r.json()
    return float(body["cpu_s"]), body["gc"]


def figures(
    marks: Marks, received: list[list[tuple[float, str | bytes]]], expected: int, tokens: int
) -> dict[str, Any]:
    """Percentiles of the whole way and of each stage (per token; fan-out per frame).
    Every subscriber must have had each of its run's ``tokens`` once and in order."""
    total: list[float] = []
    fanout: list[float] = []
    seen: set[str] = set()  # the measured runs' tokens (not the warm-up's)
    for out in received:
        last_position, last_stamp, had = -1, -1.0, 0
        for at, data in out:
            frame = json.loads(data)
            if frame["type"] != "message.delta":
                continue
            if frame["position"] <= last_position:
                raise AssertionError(
                    f"frames out of order: {frame['position']} after {last_position}"
                )
            last_position = frame["position"]
            for stamp in frame["data"]["text"].split():
                if float(stamp) <= last_stamp:
                    raise AssertionError(f"token {stamp} after {last_stamp}: out of order or twice")
                last_stamp, had = float(stamp), had + 1
                seen.add(stamp)
                total.append((at - float(stamp)) * 1000)
                fanout.append((at - marks.published[stamp]) * 1000)
        if had != tokens:
            raise AssertionError(f"a subscriber had {had} tokens of {tokens}")
    if len(total) != expected:
        raise AssertionError(f"{len(total)} tokens arrived of {expected}")
    per_token: dict[str, list[float]] = {name: [] for name in STAGES[:-1]}
    for stamp in seen:
        points = (
            float(stamp),
            marks.engine[stamp],
            marks.submitted[stamp],
            marks.taken[stamp],
            marks.published[stamp],
        )
        for name, (a, b) in zip(STAGES, itertools.pairwise(points), strict=False):
            per_token[name].append((b - a) * 1000)
    per_token["fanout"] = fanout
    total.sort()
    result: dict[str, Any] = {"p50_ms": pct(total, 0.5), "p99_ms": pct(total, 0.99)}
    result["max_ms"] = total[-1]
    for name in STAGES:
        ordered = sorted(per_token[name])
        result[f"{name}_p50_ms"] = pct(ordered, 0.5)
        result[f"{name}_p99_ms"] = pct(ordered, 0.99)
    result["tokens_received"] = len(total)
    return result


def cpu_of(pid: int, thread: int | None = None) -> float:
    """A process's CPU seconds so far (user + system, every thread), from ``/proc``;
    with ``thread``, that thread's alone."""
    where = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    fields = Path(where).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """CPU seconds every process of the machine has spent (``/proc/stat``, all cores)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSplit:
    """CPU seconds of each process of a round over its measured window, and the machine's."""

    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        now = {name: cpu_of(pid) for name, pid in self.pids.items()}
        # the server's event loop thread: the GIL holds its Python work to one core
        now["server_loop"] = cpu_of(self.pids["server"], self.pids["server"])
        now["subscribers"] = own_cpu()
        now["machine"] = machine_busy()
        now["wall"] = time.perf_counter()
        return now

    def begin(self) -> None:
        self.start = self.read()

    def end(self) -> dict[str, float]:
        """Each process's CPU seconds per wall second of the window (cores it used), and
        the rest of the machine's (other processes: a neighbour's load)."""
        stop = self.read()
        wall = stop["wall"] - self.start["wall"]
        used = {k: (stop[k] - self.start[k]) / wall for k in stop if k != "wall"}
        ours = sum(v for k, v in used.items() if k not in ("machine", "server_loop"))
        used["others"] = max(0.0, used.pop("machine") - ours)
        return {f"cores_{k}": v for k, v in used.items()} | {"window_s": wall}


def load_average() -> float:
    return os.getloadavg()[0]


# the part of ``python -m bench.stream`` --------------------------------------------------------
#: how the subscribers read: ``lean`` (``bench/stream_lean.py``) or ``aiohttp``'s client
RECEIVERS = ("lean", "aiohttp")
#: name -> (runs, subscribers per run, p50 target ms, p99 target ms)
CONFIGS: dict[str, tuple[int, int, float | None, float]] = {
    "small": (10, 3, 5.0, 25.0),
    "large": (100, 10, None, 50.0),
}


def run_tokens(
    configs: Sequence[str],
    providers: Sequence[str],
    rounds: int,
    tokens: int,
    pace_ms: float,
    earlier: dict[str, Any] | None = None,
    receiver: str = "lean",
) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """Every configuration with every provider, ``rounds`` times (medians reported, each
    round's figures and the load average beside it kept); the JSON block and table rows.
    With ``earlier`` (a block of an earlier call), its rounds count too: rounds of two
    builds can then alternate, so a neighbour's load falls on both alike."""
    block: dict[str, Any] = {"tokens_per_reply": tokens, "pace_ms": pace_ms, "receiver": receiver}
    rows: list[tuple[Any, ...]] = []
    for config in configs:
        runs, subscribers, p50_target, p99_target = CONFIGS[config]
        for provider in providers:
            samples = list((earlier or {}).get(f"{config}/{provider}", {}).get("samples", []))
            for _ in range(rounds):
                before = load_average()
                sample = asyncio.run(
                    token_round(provider, runs, subscribers, tokens, pace_ms / 1000, receiver)
                )
                sample["load_average"] = (before + load_average()) / 2
                samples.append(sample)
            keys = [k for k in samples[-1] if all(k in s for s in samples)]
            median = {k: statistics.median(s[k] for s in samples) for k in keys}
            met = median["p99_ms"] <= p99_target and (
                p50_target is None or median["p50_ms"] <= p50_target
            )
            block[f"{config}/{provider}"] = {
                **median,
                "runs": runs,
                "subscribers_per_run": subscribers,
                "target_p50_ms": p50_target,
                "target_p99_ms": p99_target,
                "met": met,
                "samples": samples,
            }
            target = f"p99 <= {p99_target:g}" + (f", p50 <= {p50_target:g}" if p50_target else "")
            stages = " / ".join(f"{median[f'{n}_p99_ms']:.1f}" for n in STAGES)
            rows.append(
                (
                    f"{runs} runs x {subscribers} subs, {provider}",
                    f"{median['p50_ms']:.1f}",
                    f"{median['p99_ms']:.1f}",
                    target,
                    met,
                    stages,
                    f"{median['deltas_per_reply']:.0f}",
                    f"{median['bytes_before_compaction']:,.0f} / "
                    f"{median['bytes_after_compaction']:,.0f} / "
                    f"{median.get('run_bytes_kept', 0.0):,.0f}",
                    f"{median['server_cpu_us_per_token']:.0f} us",
                    " / ".join(f"{median.get(f'cores_{n}', 0.0):.2f}" for n in CORES),
                    f"{median['load_average']:.1f}",
                )
            )
    return block, rows


TOKEN_HEADERS = (
    "provider -> subscriber (ms)",
    "p50",
    "p99",
    "target",
    "met",
    "p99 by stage: " + " / ".join(STAGES),
    "deltas/reply",
    "run bytes/reply rows / packed / kept",
    "server CPU/token",
    "cores: " + " / ".join(CORES),
    "load",
)
