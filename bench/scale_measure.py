"""What ``bench.scale`` measures on one built store: bytes, appends, reads, maintenance.

Every figure is taken on a copy of the cached store, through the way a user
meets it: reads over HTTP against the in-process app on a real port, the
maintenance commands as subprocesses of the CLI (so their peak RSS is theirs
alone, from ``wait4``), appends through the store's own ``append``. Only the
shape of the log (event counts and bytes by type) is read with plain SQL.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import median, percentile, stopwatch
from bench.scale_build import SECRET, SESSIONS, Built, Sample, bytes_in_use
from sessionstream import projections
from sessionstream.core.settings import Settings
from sessionstream.core.vocabulary import EventType, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import NewEvent, canonical_json
from sessionstream.eventstore.packing import unpack
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.server.app import create_app

#: not in the vocabulary on purpose: no projection folds it, so appends measure the log
BENCH_EVENT = "bench.appended"
#: sessions whose as_of and catch-up are timed, spread over the log
SPREAD = 30
#: a list page, where the list endpoint takes ``limit``
PAGE = 50
#: by type: events, their stored text (every column but the integers; indexes not counted), data
ROW_BYTES = """
SELECT type, COUNT(*),
       SUM(LENGTH(stream_id) + LENGTH(event_id) + LENGTH(type) + LENGTH(data)
           + LENGTH(metadata) + IFNULL(LENGTH(correlation_id), 0) + LENGTH(recorded_at)
           + LENGTH(hash)),
       SUM(LENGTH(data))
FROM events GROUP BY type
"""


def settings_for(*, path: Path | None = None, url: str | None = None) -> Settings:
    return Settings(
        db_path=str(path or "unused.db"),
        database_url=url,
        secret=SECRET,
        rate_limit=0,
        log_level="WARNING",
    )


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[str]:
    """The app on a real port; yields its base URL."""
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def copy_store(source: Path, target: Path) -> Path:
    for stale in target.parent.glob(target.name + "*"):
        stale.unlink()
    for suffix in ("", "-wal", ".secret"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")
    return target


def integrate_tree(path: Path) -> float:
    """Bring a copied store's Merkle tree to its head, as a running server's checkpoints
    keep it (``SESSIONSTREAM_CHECKPOINT_INTERVAL_S``, 300 s by default); returns the seconds
    it took. A store built in less than one interval has only its first, empty,
    checkpoint, so the reads would time the reading server's first checkpoint integrating
    the whole log beside them (10^6 events: 13 s, a page of the session list p99 40-80 ms
    meanwhile, against 2-3 ms once it is done)."""

    async def run() -> float:
        store = SQLiteEventStore(path, projections.ALL)
        await store.open()
        try:
            started = time.perf_counter()
            await store.tree.integrate()
            return time.perf_counter() - started
        finally:
            await store.close()

    return asyncio.run(run())


def packed_deltas(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """Token deltas packed beside the rows (``eventstore/packing.py``): how many, the
    packs' stored bytes, and their data's JSON bytes (unpacked one pack at a time)."""
    try:
        rows = conn.execute("SELECT stream_id, correlation_id, body FROM packs")
    except sqlite3.OperationalError:  # a store from before packs
        return 0, 0, 0
    count = stored = text = 0
    for stream_id, correlation_id, body in rows:
        events = unpack(stream_id, correlation_id, bytes(body))
        count += len(events)
        stored += len(body)
        text += sum(len(canonical_json(e.data).encode()) for e in events)
    return count, stored, text


#: where the bytes in use are (``dbstat``: every page of every B-tree), by what holds them
WHERE_BYTES = """
SELECT CASE
    WHEN name = 'events' THEN 'events'
    WHEN tbl_name = 'events' THEN 'events_indexes'
    WHEN tbl_name = 'packs' THEN 'packs'
    WHEN tbl_name = 'docs' THEN 'docs'
    ELSE 'other' END AS part,
    SUM(pgsize), SUM(unused)
FROM dbstat JOIN sqlite_schema USING (name) GROUP BY part
"""
PARTS = ("events", "events_indexes", "packs", "docs", "other")


def where_bytes(conn: sqlite3.Connection, turns: int) -> dict[str, float]:
    """KB per turn in each part of the file, and the part of the events table left unused."""
    out: dict[str, float] = {f"kb_per_turn_{part}": 0.0 for part in PARTS}
    for part, size, unused in conn.execute(WHERE_BYTES):
        out[f"kb_per_turn_{part}"] = size / 1024 / max(1, turns)
        if part == "events":
            out["events_unused_share"] = unused / max(1, size)
    return out


# the log's shape -------------------------------------------------------------------------
def shape(path: Path, built: Built) -> dict[str, float]:
    """Bytes in the file (WAL checkpointed) per event and per turn, the bytes in use per
    turn and where they are; the deltas' share."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        by_type = conn.execute(ROW_BYTES).fetchall()
        packed = packed_deltas(conn)
        parts = where_bytes(conn, built.turns)
    finally:
        conn.close()
    in_use = bytes_in_use(path)
    size = sum(
        Path(f"{path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{path}{s}").exists()
    )
    events = sum(n for _, n, _, _ in by_type) + packed[0]
    stored = sum(b for _, _, b, _ in by_type) + packed[1]
    deltas = [(n, b, text) for kind, n, b, text in by_type if kind == EventType.MESSAGE_DELTA]
    raw_events, raw_bytes, raw_text = deltas[0] if deltas else (0, 0, 0)
    delta_events, delta_bytes = raw_events + packed[0], raw_bytes + packed[1]
    delta_text = raw_text + packed[2]
    return {
        "events": events,
        "file_mb": size / 2**20,
        "bytes_per_event": size / events,
        "bytes_per_turn": size / max(1, built.turns),
        # the turns' own: pages in use, less those in use before the first turn
        "in_use_per_turn": (in_use - built.base_bytes) / max(1, built.turns),
        "base_mb": built.base_bytes / 2**20,
        **parts,
        "delta_share_events": delta_events / events,
        "delta_share_row_bytes": delta_bytes / max(1, stored),
        "delta_row_bytes": delta_bytes / max(1, delta_events),
        "delta_data_bytes": delta_text / max(1, delta_events),
    }


# reads over HTTP ---------------------------------------------------------------------------
def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def timed_get(
    http: aiohttp.ClientSession, url: str, token: str, params: dict[str, Any] | None = None
) -> tuple[float, Any, int]:
    """(milliseconds, decoded body, bytes) of one GET that must succeed."""
    with stopwatch() as elapsed:
        async with http.get(url, params=params, headers=bearer(token)) as r:
            raw = await r.read()
            if r.status != 200:
                raise RuntimeError(f"GET {url} {params or ''}: {r.status} {raw[:200]!r}")
    return elapsed() * 1000, json.loads(raw), len(raw)


def spread(samples: Sequence[Sample], count: int) -> list[Sample]:
    """Samples from the whole log (they are kept in creation order)."""
    step = max(1, len(samples) // count)
    return list(samples[::step][:count])


def quantiles(name: str, values: Sequence[float]) -> dict[str, float]:
    return {f"{name}_p50_ms": percentile(values, 0.5), f"{name}_p99_ms": percentile(values, 0.99)}


async def session_events(http: aiohttp.ClientSession, sample: Sample) -> list[dict[str, Any]]:
    """Every event of a session and its runs, through the audit endpoint."""
    out: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        _, body, _ = await timed_get(
            http,
            f"{SESSIONS}/{sample.session_id}/events",
            sample.token,
            {"after": after, "limit": 1000},
        )
        out += body["events"]
        after = body["next"]
    return out


async def get_figures(http: aiohttp.ClientSession, built: Built, requests: int) -> dict[str, float]:
    """GET of a session: first read since start-up (cold), then again (warm); its JSON per turn."""
    samples = built.samples
    for _ in range(20):  # connections, token cache, code paths
        await timed_get(http, f"{SESSIONS}/{samples[0].session_id}", samples[0].token)
    cold: list[float] = []
    content: list[float] = []
    for sample in samples[1:]:
        ms, body, _ = await timed_get(http, f"{SESSIONS}/{sample.session_id}", sample.token)
        cold.append(ms)
        row = body["session"]
        turns = sum(1 for m in row["messages"] or () if m.get("role") == "assistant")
        content.append(len(json.dumps(row, separators=(",", ":"))) / max(1, turns))
    warm = [
        (await timed_get(http, f"{SESSIONS}/{s.session_id}", s.token))[0]
        for s in (samples[1 + i % (len(samples) - 1)] for i in range(requests))
    ]
    return {
        **quantiles("get_cold", cold),
        **quantiles("get_warm", warm),
        "row_json_per_turn": median(content),
    }


async def list_figures(
    http: aiohttp.ClientSession, built: Built, requests: int
) -> dict[str, float]:
    """Each list campaign's page of ``PAGE`` (on its own: first, after a collection, with
    the process CPU time per request beside the wall time), then the whole list."""
    out: dict[str, float] = {}
    for campaign in built.lists:
        n = campaign.sessions
        params = {"campaign_id": campaign.campaign_id, "limit": PAGE}
        _, page, _ = await timed_get(http, SESSIONS, campaign.token, params)
        if n > PAGE and len(page["sessions"]) <= PAGE:  # the endpoint pages
            for _ in range(20):  # connections, the owner's token, the index's pages
                await timed_get(http, SESSIONS, campaign.token, params)
            gc.collect()  # not a collection of the builder's garbage inside the timing
            cpu = time.process_time()
            paged = [
                (await timed_get(http, SESSIONS, campaign.token, params))[0]
                for _ in range(requests)
            ]
            out |= quantiles(f"list_{n}_page{PAGE}", paged)
            # client and server share the process: CPU per request, whatever the load
            out[f"list_{n}_page{PAGE}_cpu_ms"] = (time.process_time() - cpu) * 1000 / requests
        # a list of 10,000 takes about half a second: fewer requests for longer lists
        times, size, count = [], 0, 0
        for _ in range(max(5, min(requests, 20_000 // n))):
            ms, body, size = await timed_get(
                http, SESSIONS, campaign.token, {"campaign_id": campaign.campaign_id}
            )
            times.append(ms)
            count = len(body["sessions"])
        if count != n:
            raise RuntimeError(f"the list campaign of {n} sessions lists {count}")
        out |= quantiles(f"list_{n}", times)
        out[f"list_{n}_mb"] = size / 2**20
    return out


async def history_figures(http: aiohttp.ClientSession, built: Built) -> dict[str, float]:
    """``as_of`` by position and by time, and a session channel's catch-up from 0.

    Each picked session is read whole through the audit endpoint first; its
    middle event gives the position and the time asked for, its newest event
    the frame at which the session channel has caught up.
    """
    by_position: list[float] = []
    by_time: list[float] = []
    catch_up: list[float] = []
    for sample in spread(built.samples, SPREAD):
        events = await session_events(http, sample)
        own = [e for e in events if e["stream_id"] == session_stream(sample.session_id)]
        middle = own[len(own) // 2]
        url = f"{SESSIONS}/{sample.session_id}"
        ms, body, _ = await timed_get(http, url, sample.token, {"as_of": middle["position"]})
        assert body["as_of"] == middle["position"]
        by_position.append(ms)
        ms, body, _ = await timed_get(http, url, sample.token, {"as_of": middle["recorded_at"]})
        assert body["as_of"] >= middle["position"]
        by_time.append(ms)
        catch_up.append(await catch_up_ms(http, sample, events[-1]["position"]))
    return {
        **quantiles("as_of_position", by_position),
        **quantiles("as_of_time", by_time),
        **quantiles("catch_up", catch_up),
    }


async def catch_up_ms(http: aiohttp.ClientSession, sample: Sample, last: int) -> float:
    """A session channel subscriber from position 0 until the frame of its newest event."""
    url = f"/api/realtime/sessions/{sample.session_id}"
    with stopwatch() as elapsed:
        async with http.ws_connect(url, params={"after": 0}, headers=bearer(sample.token)) as ws:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"session channel: {message.type} {message.data!r}")
                if json.loads(message.data).get("position", 0) >= last:
                    break
    return elapsed() * 1000


async def read_round(settings: Settings, built: Built, requests: int) -> dict[str, float]:
    async with served(settings) as base, aiohttp.ClientSession(base) as http:
        return {
            **await get_figures(http, built, requests),
            **await list_figures(http, built, requests),
            **await history_figures(http, built),
        }


# the CLI's maintenance commands --------------------------------------------------------------
#: Starts the command and reports its wall time and peak RSS. A child's ``ru_maxrss``
#: starts at its parent's RSS at fork (Linux records the old image's high-water mark
#: at exec), so the command is started from this small interpreter, not from the
#: benchmark, which holds hundreds of MB after a build.
LAUNCHER = """
import os, subprocess, sys, time
started = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def cli(*args: str) -> dict[str, float]:
    """``python -m sessionstream <args>``: its wall time and peak RSS (MiB), its own."""
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "sessionstream", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 3 or fields[2] != "0":
        raise RuntimeError(f"sessionstream {' '.join(args)}: {done.stderr[-2000:]}")
    return {"s": float(fields[0]), "rss_mb": int(fields[1]) / 1024}  # Linux reports KiB


# appends --------------------------------------------------------------------------------------
def write_bytes() -> int:
    """Bytes this process (every thread: the store's writer too) sent to the storage layer."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no write_bytes")


def settle(path: Path) -> None:
    """What opening the store wrote (a schema migration, a rebuild of read models whose
    projection changed since the store was built) into the file and onto the disk, so
    the appends measured next are not charged with it."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    os.sync()


async def append_round(store: EventStore, appenders: int, per_appender: int) -> float:
    """Events/s of ``appenders`` tasks, each appending one event a call to its own stream."""
    prefix = uuid.uuid4().hex[:8]

    async def appender(n: int) -> None:
        for version in range(per_appender):
            event = NewEvent(BENCH_EVENT, {"n": n, "i": version, "pad": "x" * 100}, {"actor": "b"})
            await store.append(f"bench-{prefix}-{n}", [event], expected_version=version)

    with stopwatch() as elapsed:
        await asyncio.gather(*(appender(n) for n in range(appenders)))
    return appenders * per_appender / elapsed()


async def single_appends(store: EventStore, count: int) -> list[float]:
    """Milliseconds of each of ``count`` sequential one-event appends."""
    stream = f"bench-{uuid.uuid4().hex[:8]}-single"
    times: list[float] = []
    for version in range(count):
        event = NewEvent(BENCH_EVENT, {"i": version, "pad": "x" * 100}, {"actor": "b"})
        with stopwatch() as elapsed:
            await store.append(stream, [event], expected_version=version)
        times.append(elapsed() * 1000)
    return times


async def sqlite_appends(
    path: Path, appenders: int, per_appender: int, singles: int
) -> dict[str, float]:
    """Both append figures on one store, and the disk bytes the concurrent appends cost.

    The bytes are counted from the first append to the store's close, which
    checkpoints the WAL into the file: each page an append dirtied is paid for
    once in the WAL and once in the file, as it is in a long-running server.
    """
    async with SQLiteEventStore(path, projections.ALL) as store:
        await asyncio.to_thread(settle, path)
        before = write_bytes()
        rate = await append_round(store, appenders, per_appender)
    disk = write_bytes() - before
    async with SQLiteEventStore(path, projections.ALL) as again:
        times = await single_appends(again, singles)
    return {
        "append_100_per_s": rate,
        "disk_bytes_per_event": disk / (appenders * per_appender),
        **quantiles("append_single", times),
    }
