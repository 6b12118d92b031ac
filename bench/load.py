"""Load: the real server under 200 concurrent clients, then the HTTP targets.

1. Mixed load (``--duration`` s, 60 by default, ``--quick`` 10): the real
   server as a subprocess (SQLite, offline engine at 5 ms a word, rate limit
   off) and ``--clients`` loops, each on one of the seeded sessions of one of
   several users, mixing ``GET`` of a session, the session list, ``PATCH``,
   turns and session subscriptions (websockets). A turn waits for its run's
   terminal frame on the run channel; a turn refused with 409 (the session
   is busy: several clients share a session on purpose) waits on the session
   channel for the run that holds it to end, as a well-behaved client does.
   Every outcome other than a 2xx or that 409 is an error (5xx, other 4xx,
   connection errors, a subscription that never sees its run end); the run
   must end with none.
2. The ARCHITECTURE.md HTTP targets, same load client, same minute (see
   ``bench/http.py`` for the baselines): ``GET`` of a session against a bare
   aiohttp + aiosqlite primary-key read, and 64 clients PATCHing against a
   naive one-commit-per-request durable server. Measured on freshly created
   sessions, whose rows are about the size of the baseline's (the sessions
   of part 1 have grown long message lists by then). Median of
   ``--rounds``, subject and baseline alternating.

Prints one table per part and writes ``bench/results/load.json``.

    python -m bench.load [--duration 60] [--clients 200] [--rounds 3] [--quick]
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import base_parser, install_uvloop, median, print_table, write_json
from bench.http import (
    BASELINE_ROWS,
    WRK,
    Call,
    Server,
    Tally,
    hammer,
    start,
    start_baseline,
    wrk,
)
from sessionstream import projections
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.services.accounts import create_user

S = "/api/campaigns/ai-chat-sessions"
TERMINAL = frozenset({"run.completed", "run.failed", "run.canceled"})
USERS = 10
SESSIONS_PER_USER = 6
TARGET_CLIENTS = 64
#: the mix: action -> weight
MIX = {"get": 40, "list": 15, "patch": 25, "turn": 10, "subscribe": 10}
MESSAGES = (
    "Write an intro email for enterprise VPs of Sales about time-to-ROI",
    "We are Acme Analytics; proof: 30% faster pipeline reviews; CTA: a 15 minute call",
    "Make it shorter and more formal",
)
SERVER_ENV = {
    "SESSIONSTREAM_OFFLINE_PACE_MS": "5",
    "SESSIONSTREAM_RATE_LIMIT": "0",
    "SESSIONSTREAM_LOG_LEVEL": "WARNING",
    "SESSIONSTREAM_SECRET": "bench-load-secret-0123456789abcdef0123456789",
    "SESSIONSTREAM_MAX_CONCURRENT_RUNS": "64",
}
RUN_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Seat:
    """Where one client works: a session of a user."""

    token: str
    session_id: str
    campaign_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Load:
    """The mixed-load run: one tally per endpoint."""

    def __init__(self, base: str, seats: list[Seat]) -> None:
        self.base = base
        self.ws_base = base.replace("http://", "ws://")
        self.seats = seats
        self.tallies: dict[str, Tally] = defaultdict(Tally)
        self.frames = 0

    async def run(self, clients: int, seconds: float, seed: int = 7) -> float:
        rng = random.Random(seed)
        actions = list(MIX)
        weights = list(MIX.values())
        stop_at = time.perf_counter() + seconds
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=RUN_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

            async def client(n: int) -> None:
                seat = self.seats[n % len(self.seats)]
                local = random.Random(rng.random())
                while time.perf_counter() < stop_at:
                    action = local.choices(actions, weights)[0]
                    try:
                        await getattr(self, action)(http, seat, local)
                    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                        self.tallies[action].error(f"{action}: {exc!r}")

            began = time.perf_counter()
            await asyncio.gather(*(client(n) for n in range(clients)))
            return time.perf_counter() - began

    async def _timed(
        self, name: str, http: aiohttp.ClientSession, method: str, path: str, **kw: Any
    ) -> tuple[int, Any]:
        started = time.perf_counter()
        async with http.request(method, self.base + path, **kw) as r:
            body = await r.json(content_type=None) if r.content_length != 0 else None
            elapsed = time.perf_counter() - started
            tally = self.tallies[name]
            if 200 <= r.status < 300:
                tally.latencies.append(elapsed)
            elif not (name == "turn" and r.status == 409):
                tally.error(f"{method} {path.split('?')[0][:60]}: HTTP {r.status} {body!r:.200}")
            return r.status, body

    async def get(self, http: aiohttp.ClientSession, seat: Seat, _rng: random.Random) -> None:
        await self._timed("get", http, "GET", f"{S}/{seat.session_id}", headers=seat.headers)

    async def list(self, http: aiohttp.ClientSession, seat: Seat, _rng: random.Random) -> None:
        path = f"{S}?campaign_id={seat.campaign_id}"
        await self._timed("list", http, "GET", path, headers=seat.headers)

    async def patch(self, http: aiohttp.ClientSession, seat: Seat, rng: random.Random) -> None:
        body = {"title": f"load {rng.random():.6f}"}
        await self._timed(
            "patch", http, "PATCH", f"{S}/{seat.session_id}", json=body, headers=seat.headers
        )

    async def turn(self, http: aiohttp.ClientSession, seat: Seat, rng: random.Random) -> None:
        started = time.perf_counter()
        status, body = await self._timed(
            "turn",
            http,
            "POST",
            f"{S}/{seat.session_id}/turn",
            json={"message": rng.choice(MESSAGES)},
            headers=seat.headers,
        )
        if status == 200:
            path = f"/api/realtime/runs/{body['runId']}?token={body['publicAccessToken']}"
            if await self._until_terminal(http, path, "run"):
                self.tallies["run (turn to terminal frame)"].latencies.append(
                    time.perf_counter() - started
                )
        elif status == 409:
            self.tallies["turn"].expected += 1
            await self._wait_free(http, seat)

    async def _wait_free(self, http: aiohttp.ClientSession, seat: Seat) -> None:
        """Subscribe to the session from the log head, then check it is still busy."""
        async with http.get(self.base + "/healthz") as r:
            head = (await r.json())["head_position"]
        path = f"/api/realtime/sessions/{seat.session_id}?after={head}"
        async with http.ws_connect(self.ws_base + path, headers=seat.headers) as ws:
            async with http.get(f"{self.base}{S}/{seat.session_id}", headers=seat.headers) as r:
                if (await r.json())["session"]["task_status"] is None:
                    return
            await self._read_until_terminal(ws, "wait for a busy session")

    async def _until_terminal(self, http: aiohttp.ClientSession, path: str, name: str) -> bool:
        async with http.ws_connect(self.ws_base + path) as ws:
            return await self._read_until_terminal(ws, name)

    async def _read_until_terminal(self, ws: aiohttp.ClientWebSocketResponse, name: str) -> bool:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = await ws.receive(timeout=deadline - time.monotonic())
            if msg.type != aiohttp.WSMsgType.TEXT:
                self.tallies[name].error(f"{name}: socket ended ({msg.type.name}) before the run")
                return False
            self.frames += 1
            if json.loads(msg.data).get("type") in TERMINAL:
                return True
        self.tallies[name].error(f"{name}: no terminal frame within {RUN_TIMEOUT_S}s")
        return False

    async def subscribe(self, http: aiohttp.ClientSession, seat: Seat, rng: random.Random) -> None:
        """A viewer: opens the session channel at the log head, watches a moment, leaves.

        Latency is the handshake (the channel is authorised and subscribed);
        a viewer replaying a session's whole history is ``bench.stream``'s job.
        """
        async with http.get(self.base + "/healthz") as r:
            head = (await r.json())["head_position"]
        started = time.perf_counter()
        path = f"/api/realtime/sessions/{seat.session_id}?after={head}"
        async with http.ws_connect(self.ws_base + path, headers=seat.headers) as ws:
            self.tallies["subscribe"].latencies.append(time.perf_counter() - started)
            watch_until = time.monotonic() + rng.uniform(0.2, 1.0)
            while (left := watch_until - time.monotonic()) > 0:
                try:
                    msg = await ws.receive(timeout=left)
                except TimeoutError:
                    break
                if msg.type != aiohttp.WSMsgType.TEXT:
                    self.tallies["subscribe"].error(f"subscribe: closed with {msg.type.name}")
                    return
                self.frames += 1


# setup ----------------------------------------------------------------------------------
async def make_users(db: Path, count: int) -> list[str]:
    store = SQLiteEventStore(db, projections.ALL)
    async with store:
        return [(await create_user(store, f"load{n}"))[1] for n in range(count)]


async def seed(base: str, tokens: list[str], per_user: int) -> list[Seat]:
    seats: list[Seat] = []
    async with aiohttp.ClientSession(base) as http:
        for token in tokens:
            h = {"Authorization": f"Bearer {token}"}
            async with http.post("/api/campaigns", json={"name": "load"}, headers=h) as r:
                cid = (await r.json())["campaign"]["id"]
            async with http.post(f"/api/campaigns/{cid}/nodes", json={}, headers=h) as r:
                nid = (await r.json())["node"]["id"]
            for _ in range(per_user):
                body = {"campaign_id": cid, "node_id": nid}
                async with http.post(S, json=body, headers=h) as r:
                    assert r.status == 201, await r.text()
                    seats.append(Seat(token, (await r.json())["session"]["id"], cid))
    return seats


async def head(base: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(base + "/healthz") as r:
        return int((await r.json())["head_position"])


# the targets ----------------------------------------------------------------------------
TITLES_PER_SEAT = 4  # distinct PATCH bodies per seat, so consecutive patches change something


def target_calls(seats: list[Seat]) -> dict[str, tuple[str, list[Call]]]:
    """Each measured series as (which server, the requests it rotates through)."""
    json_h = {"Content-Type": "application/json"}
    rows = [str((c * 7919) % BASELINE_ROWS) for c in range(TARGET_CLIENTS)]
    return {
        "get_session": (
            "service",
            [Call("GET", f"{S}/{s.session_id}", s.headers) for s in seats],
        ),
        "get_baseline": ("read", [Call("GET", f"/rows/{r}") for r in rows]),
        "get_baseline_one_hop": ("read", [Call("GET", f"/rows-one-hop/{r}") for r in rows]),
        "get_ceiling": ("read", [Call("GET", f"/constant/{r}") for r in rows]),
        "patch_session": (
            "service",
            [
                Call(
                    "PATCH", f"{S}/{s.session_id}", {**s.headers, **json_h}, f'{{"title": "t{n}"}}'
                )
                for n in range(TITLES_PER_SEAT)
                for s in seats
            ],
        ),
        "patch_baseline": (
            "write",
            [
                Call("PATCH", f"/rows/{c}", json_h, f'{{"title": "t{n}"}}')
                for n in range(TITLES_PER_SEAT)
                for c in range(TARGET_CLIENTS)
            ],
        ),
    }


async def python_client(base_url: str, calls: list[Call], seconds: float) -> tuple[float, Tally]:
    """The fallback load client when wrk is missing (it caps what it can measure)."""

    async def request(http: aiohttp.ClientSession, client: int, n: int) -> int:
        call = calls[(client * 7919 + n) % len(calls)]
        async with http.request(
            call.method, base_url + call.path, headers=call.headers, data=call.body
        ) as r:
            await r.read()
            return r.status

    return await hammer(request, clients=TARGET_CLIENTS, seconds=seconds)


async def measure_targets(
    server: Server,
    seats: list[Seat],
    workdir: Path,
    rounds: int,
    seconds: float,
    client: str,
    only: str | None = None,
) -> dict[str, Any]:
    """The targets with one load client (``wrk`` or ``python``); ``only`` keeps series
    whose name starts with it (``patch``: the write path alone)."""
    base = server.base_url
    servers = {
        "service": server,
        "read": start_baseline("read", workdir / f"baseline-read-{client}.db"),
        "write": start_baseline("write", workdir / f"baseline-write-{client}.db"),
    }
    samples: dict[str, list[float]] = defaultdict(list)
    use_wrk = client == "wrk"
    series = {k: v for k, v in target_calls(seats).items() if only is None or k.startswith(only)}
    try:
        for _ in range(rounds):
            for name, (which, calls) in series.items():
                url = servers[which].base_url
                before = await head(base) if name == "patch_session" else 0
                began = time.perf_counter()
                if use_wrk:
                    rate, summary = await wrk(url, calls, clients=TARGET_CLIENTS, seconds=seconds)
                    errors, sample = summary["errors"], str(summary)
                else:
                    rate, tally = await python_client(url, calls, seconds)
                    errors, sample = tally.errors, str(tally.error_samples)
                if errors:
                    raise RuntimeError(f"{name}: {errors} errors, e.g. {sample}")
                if name == "patch_session":
                    # count events committed to the log, not responses (warm-up included)
                    rate = (await head(base) - before) / (time.perf_counter() - began)
                samples[name].append(rate)
    finally:
        servers["read"].stop()
        servers["write"].stop()

    def target(subject: str, baseline: str, what: str, unit: str) -> dict[str, Any]:
        if not samples[subject] or not samples[baseline]:
            return {"what": what, "unit": unit, "target": None, "met": None, "skipped": True}
        s, b = median(samples[subject]), median(samples[baseline])
        ratio = s / b if b else 0.0
        return {
            "what": what,
            "unit": unit,
            "subject": s,
            "baseline": b,
            "ratio": round(ratio, 2),
            "target": 1.5,
            "met": ratio >= 1.5,
            "samples": {"subject": samples[subject], "baseline": samples[baseline]},
        }

    return {
        "clients": TARGET_CLIENTS,
        "load_client": "wrk -t1" if use_wrk else "aiohttp (Python)",
        "seconds": seconds,
        "rounds": rounds,
        "get_session": target(
            "get_session",
            "get_baseline",
            "GET session vs bare aiohttp + one aiosqlite primary-key read (cursor + fetchone)",
            "requests/s",
        ),
        "get_session_vs_one_hop": {
            **target(
                "get_session",
                "get_baseline_one_hop",
                "GET session vs the leanest aiosqlite read (execute_fetchall, one hop); context",
                "requests/s",
            ),
            "target": None,
            "met": None,
        },
        "get_session_vs_ceiling": {
            **target(
                "get_session",
                "get_ceiling",
                "GET session vs a bare aiohttp handler returning a constant body (no database, "
                "no middleware): the most any aiohttp handler serves here; context",
                "requests/s",
            ),
            "target": None,
            "met": None,
        },
        "patch_session": target(
            "patch_session",
            "patch_baseline",
            "PATCH session vs one INSERT + COMMIT per request (synchronous=FULL)",
            "events/s",
        ),
    }


# main -----------------------------------------------------------------------------------
def load_clients(choice: str) -> list[str]:
    """``both`` (the default) measures with wrk and with the Python client, wrk permitting."""
    if choice in ("wrk", "both") and not WRK:
        if choice == "wrk":
            raise SystemExit("wrk is not installed (apt-get install -y wrk)")
        return ["python"]
    return ["wrk", "python"] if choice == "both" else [choice]


async def run(args: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        workdir = Path(tmp)
        db = workdir / "load.db"
        tokens = await make_users(db, USERS)
        server = start(["sessionstream", "serve", "--db", str(db)], SERVER_ENV, workdir / "log")
        try:
            seats = await seed(server.base_url, tokens, SESSIONS_PER_USER)
            load = Load(server.base_url, seats)
            head_before = await head(server.base_url)
            elapsed = await load.run(args.clients, 0.0 if args.targets_only else args.duration)
            events = await head(server.base_url) - head_before
            # fresh sessions: rows the size of the baseline's, not grown by a minute of turns
            fresh = await seed(server.base_url, tokens, SESSIONS_PER_USER)
            targets = {
                client: await measure_targets(
                    server, fresh, workdir, args.rounds, args.seconds, client, args.only
                )
                for client in load_clients(args.client)
            }
        finally:
            server.stop()
            log = (workdir / "log").read_text(errors="replace")
    endpoints = {name: t.summary(elapsed) for name, t in sorted(load.tallies.items())}
    errors = sum(e["errors"] for e in endpoints.values())
    return {
        "benchmark": "load",
        "quick": args.quick,
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "users": USERS,
        "sessions": len(seats),
        "mix": MIX,
        "offline_pace_ms": float(SERVER_ENV["SESSIONSTREAM_OFFLINE_PACE_MS"]),
        "endpoints": endpoints,
        "frames_received": load.frames,
        "events_written": events,
        "events_per_s": events / elapsed,
        "errors": errors,
        "server_errors_logged": sum('"level": "error"' in line for line in log.splitlines()),
        "targets": targets,
    }


def report(result: dict[str, Any]) -> None:
    print(
        f"\nbench.load: {result['clients']} clients for {result['duration_s']} s "
        f"({result['sessions']} sessions of {result['users']} users)"
    )
    rows = [
        (
            name,
            e["count"],
            e["errors"],
            e["expected_refusals"],
            e["per_s"],
            e["p50_ms"],
            e["p95_ms"],
            e["p99_ms"],
        )
        for name, e in result["endpoints"].items()
    ]
    if rows:  # none with --targets-only
        print_table(
            ("endpoint", "count", "errors", "409s", "per s", "p50 ms", "p95 ms", "p99 ms"), rows
        )
    print(
        f"events written: {result['events_written']:,} ({result['events_per_s']:,.0f}/s); "
        f"websocket frames received: {result['frames_received']:,}; errors: {result['errors']}"
    )
    for t in result["targets"].values():
        print(
            f"\nHTTP targets ({t['clients']} clients of {t['load_client']}, "
            f"median of {t['rounds']} x {t['seconds']} s)"
        )
        keys = ("get_session", "get_session_vs_one_hop", "get_session_vs_ceiling", "patch_session")
        print_table(
            ("target", "unit", "sessionstream", "baseline", "ratio", "goal", "met"),
            [
                (key, t[key]["unit"], t[key]["subject"], t[key]["baseline"], t[key]["ratio"])
                + ((">= 1.5", t[key]["met"]) if t[key]["target"] else ("(context)", "-"))
                for key in keys
                if not t[key].get("skipped")
            ],
        )
    for name, e in result["endpoints"].items():
        for sample in e["error_samples"]:
            print(f"  error ({name}): {sample}")


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of mixed load")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0, help="per target measurement")
    parser.add_argument(
        "--client",
        choices=("both", "wrk", "python"),
        default="both",
        help="load client(s) for the HTTP targets (both: wrk, if installed, then Python)",
    )
    parser.add_argument("--targets-only", action="store_true", help="skip the mixed load")
    parser.add_argument("--only", help="measure only the target series starting with this")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.seconds = 10.0, 1, 3.0
    loop = "uvloop" if install_uvloop() else "asyncio"
    result = asyncio.run(run(args))
    result["loop"] = loop
    report(result)
    write_json("load", result)
    if result["errors"]:
        print(f"FAILED: {result['errors']} unexpected outcomes under load", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
