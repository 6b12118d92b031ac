"""Stores shaped like real use, built through the application's own write paths.

``bench.scale`` asks what every cost does as the log grows, so the log must
grow the way a deployment's does: many users, each with campaigns and nodes,
sessions that chat through the run manager with the offline engine (whose
token deltas are most of the log), PATCHes, example batches, and a few
campaigns holding many sessions for the list figures. Everything goes through
``create_app`` over HTTP on a real port, so the events, their metadata, the
read models and the snapshots are exactly what the service writes.

The engine's pace and the delta coalescing window are both divided by ten
(2.5 ms a word, 3 ms a window, against 25 and 30 by default) to build quickly
while keeping their ratio, so a delta still carries about as many words as at
the default pace; the shape actually built (events per turn, the deltas'
share, words per delta) is reported beside every figure rather than assumed.

A built store is kept under the cache directory, keyed by its size and by a
digest of the code that decides its bytes (this module, and ``eventstore/``,
``projections/``, ``engines/``, ``services/``), so a rerun measures the same
store without rebuilding and a change that would make it stale builds a new
one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

import sessionstream
from sessionstream import projections
from sessionstream.core.settings import Settings
from sessionstream.core.vocabulary import RUN_PREFIX, TERMINAL, EventType
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.server.app import create_app
from sessionstream.services.accounts import create_user

SESSIONS = "/api/campaigns/ai-chat-sessions"
SECRET = "bench-scale-secret-0123456789abcdef0123"
PACE_MS = 2.5
COALESCE_MS = 3.0
#: sessions chatting at once while building
WORKERS = 24
#: campaigns of this many sessions are built for the list figures, where they fit
LIST_SIZES = (10, 1_000, 10_000)
#: a list campaign may take at most this share of the store's events (two per session)
LIST_SHARE = 0.1
#: events a chatting session writes, until the build has measured its own mean
SESSION_EVENTS_GUESS = 500
#: sessions whose ids (and owners' tokens) are kept for the read figures
SAMPLE = 200
BRIEFS = (
    "Write an intro email for enterprise VPs of Sales, emphasizing time-to-ROI",
    "Draft a follow-up for CFOs at mid-market logistics companies about cutting freight spend",
    "Cold email to heads of engineering about our CI acceleration service",
    "A short note to HR directors announcing our onboarding analytics product",
)
ANSWERS = (
    "We are Acme Analytics. Proof: customers cut reporting time by 40%. "
    "CTA: a 15 minute call. Tone: friendly but professional.",
    "We are Northwind Labs; proof: 3x faster builds at Globex. CTA: book a demo. Tone: direct.",
)
REFINES = ("Looks good, go ahead and draft it", "Make it shorter and more formal")
LEADS: tuple[dict[str, Any], ...] = (
    {"id": "lead-1", "first_name": "Dana", "company": "Northwind", "position": "VP of Sales"},
    {"id": "lead-2", "first_name": "Luis", "company": "Globex", "position": "Head of Revenue"},
    {"id": "lead-3", "first_name": "Priya", "company": "Initech", "position": "CRO"},
)
TURN_EXTRAS: dict[str, Any] = {
    "availableVarNames": ["first_name", "company", "position"],
    "sampleLeads": [{k: v for k, v in lead.items() if k != "id"} for lead in LEADS],
    "sequenceContext": {"position": 1, "total_nodes": 3, "prior_nodes": []},
}


@dataclass(frozen=True, slots=True)
class Sample:
    """A session the read figures fetch, with its owner's token."""

    session_id: str
    token: str


@dataclass(frozen=True, slots=True)
class ListCampaign:
    sessions: int
    campaign_id: str
    token: str


@dataclass(frozen=True, slots=True)
class Built:
    """A built store and what the measurements need to know about it."""

    path: Path
    events: int
    turns: int
    sessions: int
    users: int
    build_s: float
    samples: tuple[Sample, ...]
    lists: tuple[ListCampaign, ...]
    #: bytes in use (pages not free) before the first chat turn: the users and the list
    #: campaigns, which are not turns; 0 for a store built before this was recorded
    base_bytes: int = 0

    @staticmethod
    def load(path: Path) -> Built:
        raw = json.loads(path.with_suffix(".json").read_text())
        return Built(
            path=path,
            events=raw["events"],
            turns=raw["turns"],
            sessions=raw["sessions"],
            users=raw["users"],
            build_s=raw["build_s"],
            samples=tuple(Sample(**s) for s in raw["samples"]),
            lists=tuple(ListCampaign(**c) for c in raw["lists"]),
            base_bytes=raw.get("base_bytes", 0),
        )

    def save(self) -> None:
        body = {k: v for k, v in asdict(self).items() if k != "path"}
        self.path.with_suffix(".json").write_text(json.dumps(body, indent=1) + "\n")


def bytes_in_use(path: Path) -> int:
    """The pages of an SQLite file that hold something, in bytes, as a reader sees it
    (the WAL included, free pages not: later writes reuse those)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("BEGIN")  # the three pragmas in one snapshot
        size, pages, free = (
            conn.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_size", "page_count", "freelist_count")
        )
        conn.execute("COMMIT")
        return int(size * (pages - free))
    finally:
        conn.close()


def code_digest() -> str:
    """Digest of the code that decides a built store's bytes (its cache key)."""
    root = Path(sessionstream.__file__).resolve().parent
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for layer in ("eventstore", "projections", "engines", "services"):
        # rglob: the backends' own packages (eventstore/sqlite/) decide the bytes too
        base = (root / layer).resolve()
        for source in sorted(base.rglob("*.py")):
            name = f"{layer}/{source.relative_to(base)}"
            digest.update(name.encode() + source.read_bytes())
    return digest.hexdigest()[:12]


def progress(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def list_sizes(size: int) -> tuple[int, ...]:
    return tuple(n for n in LIST_SIZES if 2 * n <= LIST_SHARE * size)


def user_count(size: int) -> int:
    """Many users: one per 10,000 events, at least four."""
    return max(4, size // 10_000)


def cached(size: int, cache: Path, *, rebuild: bool = False) -> Built:
    """The store of ``size`` events from the cache, built first when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"scale-{size}-{code_digest()}.db"
    if path.exists() and path.with_suffix(".json").exists() and not rebuild:
        progress(f"{size:,} events: cached at {path}")
        return Built.load(path)
    partial = path.with_name(path.stem + ".partial.db")
    for stale in cache.glob(partial.name + "*"):
        stale.unlink()
    progress(f"{size:,} events: building at {partial}")
    built = asyncio.run(build(size, partial))
    for suffix in ("", "-wal", "-shm", ".secret"):
        source = Path(f"{partial}{suffix}")
        if source.exists():
            shutil.move(source, f"{path}{suffix}")
    final = replace(built, path=path)
    final.save()
    return final


class Watcher:
    """Wakes whoever waits for a run when its terminal event commits (one log tail)."""

    def __init__(self) -> None:
        self.ended: dict[str, asyncio.Event] = {}
        self.turns = 0

    def waiter(self, run_id: str) -> asyncio.Event:
        return self.ended.setdefault(run_id, asyncio.Event())

    async def watch(self, store: SQLiteEventStore, after: int) -> None:
        async for event in store.subscribe(after):
            if event.type in TERMINAL:
                self.waiter(event.stream_id.removeprefix(RUN_PREFIX)).set()
            elif event.type == EventType.MESSAGE_COMPLETED:
                self.turns += 1

    async def wait(self, run_id: str) -> None:
        await self.waiter(run_id).wait()
        del self.ended[run_id]


class Client:
    """One user's HTTP session against the app under construction."""

    def __init__(self, http: aiohttp.ClientSession, token: str) -> None:
        self.http, self.token = http, token
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, url: str, body: Any = None) -> dict[str, Any]:
        async with self.http.request(method, url, json=body, headers=self.headers) as r:
            payload: dict[str, Any] = await r.json()
            if r.status >= 300:
                raise RuntimeError(f"{method} {url}: {r.status} {payload}")
            return payload

    async def campaign(self, name: str, nodes: int) -> tuple[str, list[str]]:
        cid = (await self.call("POST", "/api/campaigns", {"name": name}))["campaign"]["id"]
        node_ids = [
            (await self.call("POST", f"/api/campaigns/{cid}/nodes", {"name": f"step {n}"}))["node"][
                "id"
            ]
            for n in range(nodes)
        ]
        return cid, node_ids

    async def session(self, campaign_id: str, node_id: str) -> str:
        body = {"campaign_id": campaign_id, "node_id": node_id}
        sid: str = (await self.call("POST", SESSIONS, body))["session"]["id"]
        return sid


async def conversation(client: Client, watcher: Watcher, sid: str, n: int) -> None:
    """A session's life: a brief, answers, a draft, edits, perhaps examples and a refinement."""

    async def run(path: str, body: dict[str, Any]) -> None:
        started = await client.call("POST", f"{SESSIONS}/{sid}/{path}", body)
        await watcher.wait(started["runId"])

    await run("turn", {"message": BRIEFS[n % len(BRIEFS)], **TURN_EXTRAS})
    await run("turn", {"message": ANSWERS[n % len(ANSWERS)], **TURN_EXTRAS})
    await run("turn", {"message": REFINES[0], **TURN_EXTRAS})
    await client.call("PATCH", f"{SESSIONS}/{sid}", {"title": f"Sequence {n} step 1"})
    if n % 2 == 0:
        await run("generate-examples", {"leads": list(LEADS), "isFirstBatch": True})
    if n % 3 == 0:
        await run("turn", {"message": REFINES[1], **TURN_EXTRAS})
        await client.call("PATCH", f"{SESSIONS}/{sid}", {"draft_subject": f"Quick idea, {n}"})


async def fill_list(client: Client, count: int, workers: int) -> ListCampaign:
    """A campaign of ``count`` sessions, each created and PATCHed once (rows of ~2 KB)."""
    cid, nodes = await client.campaign(f"list of {count}", 1)
    queue = iter(range(count))

    async def worker() -> None:
        for n in queue:
            sid = await client.session(cid, nodes[0])
            patch = {
                "title": f"Lead {n}",
                "draft_subject": f"A question for you, lead {n}",
                "draft_body": (
                    "Hi %first_name%, we help teams like yours cut reporting time. " * 9
                ),
                "messages": [
                    {"role": "user", "content": BRIEFS[n % len(BRIEFS)]},
                    {"role": "assistant", "content": "Here is a first draft. " * 20},
                ],
            }
            await client.call("PATCH", f"{SESSIONS}/{sid}", patch)

    await asyncio.gather(*(worker() for _ in range(workers)))
    return ListCampaign(count, cid, client.token)


async def build(size: int, path: Path) -> Built:
    settings = Settings(
        db_path=str(path),
        secret=SECRET,
        offline_pace_ms=PACE_MS,
        delta_coalesce_ms=COALESCE_MS,
        rate_limit=0,
        max_concurrent_runs=64,
        log_level="WARNING",
    )
    store = SQLiteEventStore(path, projections.ALL)
    runner = web.AppRunner(create_app(settings, store=store))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    started = time.perf_counter()
    watcher = Watcher()
    watching = asyncio.create_task(watcher.watch(store, await store.head_position()))
    try:
        connector = aiohttp.TCPConnector(limit=WORKERS * 2)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as http:
            users = [
                Client(http, (await create_user(store, f"user {u}"))[1])
                for u in range(user_count(size))
            ]
            lists = [await fill_list(users[0], n, WORKERS) for n in list_sizes(size)]
            if lists:
                progress(f"{size:,} events: list campaigns of {[c.sessions for c in lists]}")
            campaigns = [
                (user, *await user.campaign(f"campaign {c}", 3)) for user in users for c in range(2)
            ]
            sessions = done = 0
            samples: list[Sample] = []
            report_at = time.monotonic() + 30
            chat_start = await store.head_position()
            base_bytes = bytes_in_use(path)

            async def room() -> bool:
                """Whether another session fits, counting those still chatting at their mean."""
                head = await store.head_position()
                mean = (head - chat_start) / done if done else SESSION_EVENTS_GUESS
                return head + (sessions - done + 0.5) * mean < size

            async def worker() -> None:
                nonlocal sessions, done, report_at
                while await room():
                    n = sessions
                    sessions += 1
                    user, cid, nodes = campaigns[n % len(campaigns)]
                    sid = await user.session(cid, nodes[n // len(campaigns) % len(nodes)])
                    samples.append(Sample(sid, user.token))
                    await conversation(user, watcher, sid, n)
                    done += 1
                    if time.monotonic() > report_at:
                        report_at = time.monotonic() + 30
                        head = await store.head_position()
                        rate = head / (time.perf_counter() - started)
                        progress(f"{size:,} events: {head:,} written ({rate:,.0f}/s)")

            await asyncio.gather(*(worker() for _ in range(WORKERS)))
        events = await store.head_position()
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await runner.cleanup()
    elapsed = time.perf_counter() - started
    progress(f"{size:,} events: built {events:,} in {elapsed:,.0f} s")
    step = max(1, len(samples) // SAMPLE)
    return Built(
        path=path,
        events=events,
        turns=watcher.turns,
        sessions=sessions + sum(c.sessions for c in lists),
        users=len(users),
        build_s=round(elapsed, 1),
        samples=tuple(samples[::step][:SAMPLE]),
        lists=tuple(lists),
        base_bytes=base_bytes,
    )
