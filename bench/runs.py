"""Runs under load: 50 sessions turning concurrently through the real HTTP app.

Reports turns/s, p50/p99 from ``POST .../turn`` to ``run.started`` committed
(observed by a log subscriber in the same process), and events/s written.
Engine pace is zero, so this measures sessionstream, not the model.

    python -m bench.runs [--sessions 50] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from sessionstream.core.settings import Settings
from sessionstream.server.app import create_app
from sessionstream.server.keys import STORE
from sessionstream.services.accounts import create_user

RESULTS = Path(__file__).parent / "results"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def one_round(sessions: int, turns_per_session: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            db_path=f"{tmp}/bench.db",
            secret="bench-secret-0123456789abcdef0123456789",
            offline_pace_ms=0,
            rate_limit=0,
            max_concurrent_runs=64,
        )
        app = create_app(settings)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        store = app[STORE]
        _, token = await create_user(store, "bench")
        h = {"Authorization": f"Bearer {token}"}
        started_at: dict[str, float] = {}
        finished: dict[str, asyncio.Event] = {}
        head0 = await store.head_position()
        subscription = store.subscribe(head0)

        async def watch() -> None:
            async for event in subscription:
                if event.type == "run.started":
                    started_at[event.stream_id[4:]] = time.perf_counter()
                elif event.type in ("run.completed", "run.failed", "run.canceled"):
                    waiter = finished.get(event.stream_id[4:])
                    if waiter is not None:
                        waiter.set()

        watcher = asyncio.create_task(watch())
        async with aiohttp.ClientSession(base, headers=h) as http:
            r = await http.post("/api/campaigns", json={"name": "bench"})
            cid = (await r.json())["campaign"]["id"]
            r = await http.post(f"/api/campaigns/{cid}/nodes", json={"name": "n"})
            nid = (await r.json())["node"]["id"]
            sids = []
            for _ in range(sessions):
                r = await http.post(
                    "/api/campaigns/ai-chat-sessions", json={"campaign_id": cid, "node_id": nid}
                )
                sids.append((await r.json())["session"]["id"])
            latencies: list[float] = []
            messages = [
                "Write an intro email for enterprise VPs of Sales about time-to-ROI",
                "We are Acme Analytics; proof: 30% faster pipeline reviews; CTA: 15 minute call",
                "Make it shorter and more formal",
            ]

            async def session_loop(sid: str) -> None:
                for turn in range(turns_per_session):
                    t0 = time.perf_counter()
                    r = await http.post(
                        f"/api/campaigns/ai-chat-sessions/{sid}/turn",
                        json={"message": messages[turn % len(messages)]},
                    )
                    body = await r.json()
                    assert r.status == 200, body
                    run_id = body["runId"]
                    waiter = finished.setdefault(run_id, asyncio.Event())
                    await waiter.wait()
                    latencies.append(started_at[run_id] - t0)

            head_before = await store.head_position()
            t_start = time.perf_counter()
            await asyncio.gather(*(session_loop(s) for s in sids))
            elapsed = time.perf_counter() - t_start
            events = await store.head_position() - head_before
        subscription.close()
        watcher.cancel()
        await runner.cleanup()
    turns = sessions * turns_per_session
    return {
        "turns_per_s": turns / elapsed,
        "start_p50_ms": pct(latencies, 0.5) * 1000,
        "start_p99_ms": pct(latencies, 0.99) * 1000,
        "events_per_s": events / elapsed,
        "events_per_turn": events / turns,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.turns = 1, 2
    rounds = [asyncio.run(one_round(args.sessions, args.turns)) for _ in range(args.rounds)]
    result = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    rows = [
        ("sessions turning concurrently", f"{args.sessions}"),
        ("turns/s", f"{result['turns_per_s']:.1f}"),
        ("POST turn -> run.started p50", f"{result['start_p50_ms']:.1f} ms"),
        ("POST turn -> run.started p99", f"{result['start_p99_ms']:.1f} ms"),
        ("events written/s", f"{result['events_per_s']:.0f}"),
        ("events per turn", f"{result['events_per_turn']:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"bench.runs (median of {args.rounds} rounds)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    RESULTS.mkdir(exist_ok=True)
    out: dict[str, Any] = {
        "name": "runs",
        "rounds": args.rounds,
        "median": result,
        "all": rounds,
        "sessions": args.sessions,
        "turns": args.turns,
    }
    (RESULTS / "runs.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
