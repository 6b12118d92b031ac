"""Realtime channels end to end: token latency, fan-out, memory per idle subscriber.

(a) tokens (``bench/stream_tokens.py``): the provider's token to the
    subscriber, as the user perceives it. A fake OpenAI-compatible or
    Anthropic provider (the tests' fakes) streams 60 tokens 20 ms apart, each
    token its own send time; the server runs the real engine and SDK against
    it, coalescing included; every subscriber is a websocket here. Two loads:
    ``small`` 10 runs x 3 subscribers (targets p50 <= 5 ms, p99 <= 25 ms) and
    ``large`` 100 runs x 10 subscribers (p99 <= 50 ms). Per stage (engine read
    loop and SDK, coalescing, queueing before the writer, commit, fan-out),
    deltas and bytes per reply before and after compaction, the server's CPU
    time per token, and the load average beside each round.

The other parts run ``create_app`` in its own process (uvloop, SQLite, as
``sessionstream serve`` runs it, ``bench/stream_server.py``) with an engine
that writes ``time.perf_counter()`` into each delta's text; this process holds
every subscriber as a real aiohttp websocket (``perf_counter`` is one
monotonic clock for every process on a host):

(b) emission: 100 concurrent runs x 10 subscribers on their run channels,
    each engine emitting a word every 50 ms (starts spread over one pace so
    runs do not tick in lockstep). Latency is engine emission -> a subscriber
    has the frame (coalescing, the durable append, the fan-out and both event
    loops); the server also notes when each delta reached the hub, which
    splits it into engine -> commit and commit -> client. Target p99 <= 25 ms,
    against the documented 2,000-5,000 ms polling interval it replaces.
(c) fan-out: one run to 1,000 subscribers, one event per word, as fast as
    the log takes them; delivered frames/s beside a bare aiohttp loop
    (``send_str`` of a same-size frame to the same 1,000 sockets) in the same
    server process and run. Target >= 70% of the bare loop.
(d) memory: 5,000 idle websocket subscribers (500 on each of 10 runs that
    wait for their engine); RSS delta of the server process / 5,000.
    Target <= 50 KB.

The subscribers are the instrument: their process keeps its garbage collector
out of each measured window (a full collection over the frames they hold
would stall every socket at once and be charged to the server).

    python -m bench.stream [--rounds 3] [--quick] [--part all|tokens|emission|fanout|memory]
    python -m bench.stream --part tokens [--config small|large] [--provider openai|anthropic]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import RESULTS, base_parser, install_uvloop, print_table
from bench.stream_clients import (
    connect_all,
    drain,
    measuring,
    median_of,
    pct,
    raise_fd_limit,
    start_runs,
)
from bench.stream_server import BenchServer, rss_kb, sample_frame
from bench.stream_tokens import CONFIGS, PROVIDERS, RECEIVERS, TOKEN_HEADERS, run_tokens

POLLING_MS = (2000, 5000)
TARGET_P99_MS = 25.0
TARGET_FANOUT = 0.70
TARGET_KB = 50.0


# this process: the subscribers -------------------------------------------------------------------


class Tally:
    """Frames one socket received and when the first and the last arrived."""

    __slots__ = ("count", "first", "last")

    def __init__(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0


async def count(ws: aiohttp.ClientWebSocketResponse, tally: Tally, end: str | None) -> None:
    clock = time.perf_counter
    async for message in ws:
        if message.data == end:
            return
        now = clock()
        if not tally.count:
            tally.first = now
        tally.count += 1
        tally.last = now


async def latency_round(runs: int, subscribers: int, words: int) -> dict[str, float]:
    engine = {"words": words, "pace_s": 0.05, "stagger": True}
    with BenchServer({}, engine) as server:
        async with server.client() as http:
            started = await start_runs(http, runs)
            targets = [run for run in started for _ in range(subscribers)]
            sockets = await connect_all(http, targets, ready=2)  # run.created, run.started
            received: list[list[tuple[float, str]]] = [[] for _ in sockets]
            with measuring():
                await http.post("/bench/go")
                drains = (drain(ws, out) for ws, out in zip(sockets, received, strict=True))
                await asyncio.gather(*drains)
    total: list[float] = []  # engine -> subscriber
    commit: list[float] = []  # engine -> committed and published
    fanout: list[float] = []  # published -> subscriber
    published = server.published
    for out in received:
        for at, data in out:
            frame = json.loads(data)
            if frame["type"] != "message.delta":
                continue
            hub_at = published[frame["position"]]
            fanout.append((at - hub_at) * 1000)
            for stamp in frame["data"]["text"].split():
                total.append((at - float(stamp)) * 1000)
                commit.append((hub_at - float(stamp)) * 1000)
    expected = runs * subscribers * words
    assert len(total) == expected, (len(total), expected)
    total.sort()
    commit.sort()
    fanout.sort()
    return {
        "p50_ms": pct(total, 0.50),
        "p99_ms": pct(total, 0.99),
        "max_ms": total[-1],
        "engine_to_commit_p50_ms": pct(commit, 0.50),
        "engine_to_commit_p99_ms": pct(commit, 0.99),
        "commit_to_client_p50_ms": pct(fanout, 0.50),
        "commit_to_client_p99_ms": pct(fanout, 0.99),
        "deltas_received": len(total),
    }


async def fanout_round(subscribers: int, words: int, pairs: int) -> dict[str, Any]:
    """Subject and baseline alternately, ``pairs`` times on one server: adjacent in time,
    so a neighbour's load on this shared machine hits both sides of each ratio."""
    engine = {"words": words, "pace_s": 0.0, "stagger": False}
    subject: list[float] = []
    baseline: list[float] = []
    with BenchServer({"delta_coalesce_ms": 0.0}, engine) as server:
        async with server.client() as http:
            # the bare loop sends frames shaped and sized like the subject's deltas
            size = len(sample_frame(0)) + len(f"{time.perf_counter():.7f} ")
            for i in range(pairs):
                if i % 2:
                    baseline.append(await fanout_bare(http, subscribers, words, size))
                    subject.append(await fanout_subject(http, subscribers))
                else:
                    subject.append(await fanout_subject(http, subscribers))
                    baseline.append(await fanout_bare(http, subscribers, words, size))
    ratios = [a / b for a, b in zip(subject, baseline, strict=True)]
    return {
        "frames_per_s": statistics.median(subject),
        "bare_frames_per_s": statistics.median(baseline),
        "ratio": statistics.median(ratios),
        "frame_bytes": size,
        "samples": {"subject": subject, "baseline": baseline, "ratios": ratios},
    }


async def fanout_subject(http: aiohttp.ClientSession, subscribers: int) -> float:
    """One run, one event a word, to every subscriber: delivered frames/s."""
    ((run_id, run_token),) = await start_runs(http, 1)
    sockets = await connect_all(http, [(run_id, run_token)] * subscribers, ready=2)
    tallies = [Tally() for _ in sockets]
    with measuring():
        await http.post("/bench/go")
        await asyncio.gather(*(count(ws, t, None) for ws, t in zip(sockets, tallies, strict=True)))
    return delivery_rate(tallies)


async def fanout_bare(
    http: aiohttp.ClientSession, subscribers: int, words: int, size: int
) -> float:
    """The baseline: a bare aiohttp ``send_str`` loop over the same number of sockets."""
    sockets = [await http.ws_connect("/bench/bare", heartbeat=None) for _ in range(subscribers)]
    tallies = [Tally() for _ in sockets]
    with measuring():
        counting = [
            asyncio.create_task(count(ws, t, "end")) for ws, t in zip(sockets, tallies, strict=True)
        ]
        await http.post(f"/bench/bare/go?n={words + 2}&size={size}")
        await asyncio.gather(*counting)
    for ws in sockets:
        await ws.close()
    return delivery_rate(tallies)


def delivery_rate(tallies: list[Tally]) -> float:
    """Frames delivered per second from the first to the last arrival, over every socket."""
    first = min(t.first for t in tallies if t.count)
    last = max(t.last for t in tallies if t.count)
    return sum(t.count for t in tallies) / (last - first)


async def memory_round(subscribers: int, runs: int) -> dict[str, float]:
    engine = {"words": 1, "pace_s": 0.0, "stagger": False}
    with BenchServer({}, engine) as server:
        pid = server.pid
        async with server.client() as http:
            started = await start_runs(http, runs)
            # warm up every code path (and the allocator) before the baseline reading
            warm = await connect_all(http, started * 20, ready=2)
            for ws in warm:
                await ws.close()
            await asyncio.sleep(1.0)
            before = rss_kb(pid)
            targets = [started[i % runs] for i in range(subscribers)]
            sockets = await connect_all(http, targets, ready=2)
            await asyncio.sleep(1.0)  # idle: every subscriber live and waiting
            after = rss_kb(pid)
            for ws in sockets:
                await ws.close()
    return {
        "kb_per_subscriber": (after - before) / subscribers,
        "rss_before_mb": before / 1024,
        "rss_after_mb": after / 1024,
    }


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument(
        "--part",
        default="all",
        choices=("all", "tokens", "emission", "fanout", "memory"),
        help="tokens: provider -> subscriber (a); the rest: (b)-(d); all: every one",
    )
    parser.add_argument(
        "--config", default="both", choices=("both", *CONFIGS), help="tokens: which load"
    )
    parser.add_argument(
        "--provider", default="both", choices=("both", *PROVIDERS), help="tokens: which fake"
    )
    parser.add_argument("--tokens", type=int, default=60, help="tokens: per reply")
    parser.add_argument("--pace-ms", type=float, default=20.0, help="tokens: between tokens")
    parser.add_argument(
        "--receiver",
        default="lean",
        choices=RECEIVERS,
        help="tokens: the subscribers' websocket reader (bench/stream_lean.py, or aiohttp's)",
    )
    parser.add_argument("--label", default="after", help="tokens: the key its figures go under")
    parser.add_argument("--json", type=Path, default=RESULTS / "stream.json")
    parser.add_argument(
        "--accumulate", action="store_true", help="tokens: add to the label's earlier rounds"
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=10, help="per run, for the latency")
    parser.add_argument("--words", type=int, default=100, help="per run, for the latency")
    parser.add_argument("--fanout", type=int, default=1000)
    parser.add_argument("--fanout-words", type=int, default=500)
    parser.add_argument("--idle", type=int, default=5000)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.words, args.fanout_words = 1, 30, 200
    raise_fd_limit()
    install_uvloop()
    results: dict[str, Any] = (
        json.loads(args.json.read_text()) if args.json.exists() else {"name": "stream"}
    )
    results.update(rounds=args.rounds, quick=args.quick)
    parts = ("tokens", "emission", "fanout", "memory") if args.part == "all" else (args.part,)
    if "tokens" in parts:
        configs = tuple(CONFIGS) if args.config == "both" else (args.config,)
        providers = PROVIDERS if args.provider == "both" else (args.provider,)
        tokens: dict[str, Any] = results.setdefault("tokens", {})
        earlier = tokens.get(args.label) if args.accumulate else None
        block, rows = run_tokens(
            configs, providers, args.rounds, args.tokens, args.pace_ms, earlier, args.receiver
        )
        tokens.setdefault(args.label, {}).update(block)
        print(f"bench.stream tokens '{args.label}' (median of {args.rounds} round(s))")
        print_table(TOKEN_HEADERS, rows)
    rest = [p for p in parts if p != "tokens"]
    if rest:
        results.update(older_parts(args, rest))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")


def older_parts(args: argparse.Namespace, parts: list[str]) -> dict[str, Any]:
    """(b) engine emission -> subscriber, (c) fan-out, (d) memory: their JSON blocks."""
    out: dict[str, Any] = {}
    rows: list[tuple[Any, ...]] = []
    if "emission" in parts:
        latency_rounds = [
            asyncio.run(latency_round(args.runs, args.subscribers, args.words))
            for _ in range(args.rounds)
        ]
        latency = median_of(latency_rounds)
        out["latency"] = {
            **latency,
            "runs": args.runs,
            "subscribers_per_run": args.subscribers,
            "pace_ms": 50,
            "baseline_polling_ms": POLLING_MS[0],
            "ratio": POLLING_MS[0] / latency["p99_ms"],
            "target_p99_ms": TARGET_P99_MS,
            "met": latency["p99_ms"] <= TARGET_P99_MS,
            "samples": latency_rounds,
        }
        rows += [
            (
                f"emission -> subscriber p50 ({args.runs} runs x {args.subscribers} subs)",
                f"{latency['p50_ms']:.1f} ms",
                f"polling {POLLING_MS[0]:,}-{POLLING_MS[1]:,} ms",
                "",
                "",
            ),
            (
                "emission -> subscriber p99",
                f"{latency['p99_ms']:.1f} ms",
                f"polling {POLLING_MS[0]:,}-{POLLING_MS[1]:,} ms",
                f"<= {TARGET_P99_MS:g} ms",
                out["latency"]["met"],
            ),
            (
                "  engine -> commit p99 (run manager, store)",
                f"{latency['engine_to_commit_p99_ms']:.1f} ms",
                "",
                "",
                "",
            ),
            (
                "  commit -> client p99 (realtime, sockets)",
                f"{latency['commit_to_client_p99_ms']:.1f} ms",
                "",
                "",
                "",
            ),
        ]
    if "fanout" in parts:
        fanout = asyncio.run(fanout_round(args.fanout, args.fanout_words, pairs=args.rounds * 2))
        out["fanout"] = {
            **fanout,
            "subscribers": args.fanout,
            "events": args.fanout_words,
            "target_ratio": TARGET_FANOUT,
            "met": fanout["ratio"] >= TARGET_FANOUT,
        }
        rows.append(
            (
                f"fan-out, 1 run to {args.fanout} subs (frames/s)",
                f"{fanout['frames_per_s']:,.0f}",
                f"bare loop {fanout['bare_frames_per_s']:,.0f}",
                f">= {TARGET_FANOUT:.0%} ({fanout['ratio']:.0%})",
                out["fanout"]["met"],
            )
        )
    if "memory" in parts:
        memory_rounds = [asyncio.run(memory_round(args.idle, 10)) for _ in range(args.rounds)]
        memory = median_of(memory_rounds)
        out["memory"] = {
            **memory,
            "subscribers": args.idle,
            "target_kb": TARGET_KB,
            "met": memory["kb_per_subscriber"] <= TARGET_KB,
            "samples": memory_rounds,
        }
        rows.append(
            (
                f"memory per idle subscriber ({args.idle:,})",
                f"{memory['kb_per_subscriber']:.1f} KB",
                "",
                f"<= {TARGET_KB:g} KB",
                out["memory"]["met"],
            )
        )
    print(f"bench.stream (median of {args.rounds} round(s))")
    print_table(["figure", "measured", "baseline", "target", "met"], rows)
    return out


if __name__ == "__main__":
    main()
