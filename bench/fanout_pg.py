"""Cross-node fan-out: three ``sessionstream serve`` nodes on PostgreSQL, many
websocket subscribers spread over them watching live runs.

The runs are real turns on real nodes (``--engine openai``) against a model
this bench serves itself: a fake OpenAI-compatible endpoint, in its own
process, that streams tokens for ``--seconds``, one every PACE ms. Each
token's text is the ``time.monotonic()`` at which the model emitted it (one
clock for every process on a host). Nodes coalesce tokens into
``message.delta`` events as the server does by default (a run keeps one
delta in the writer's pipeline; text arriving meanwhile joins the next one),
or with ``--coalesce-ms`` as ``SESSIONSTREAM_DELTA_COALESCE_MS``. A
subscriber's latency for a token is the arrival of the delta carrying it,
parsed, minus the token's emission: the coalescing wait, the model-to-node
hop, the commit, ``NOTIFY``, the other node's read of the log, its hub and
websocket, and the client. It is an upper bound on the latency from the
node's emission.

Run *i* is started on node *i* mod 3; subscriber *j* watches run *j* mod runs
on node (*j* // runs) mod 3, so every run has subscribers on every node: those
on the node running it are the baseline (``local``), the others ``remote``.
The tokens start only once every subscriber has caught up and joined its
run's fanout (the nodes' ``/metrics`` count the joins), so every delta is
live delivery and no subscriber's catch-up reads fall inside the round.
Beside the latencies it reports the CPU the nodes and the subscribers spent
per delta frame delivered, and the nodes' per delta and per token, which do
not depend on how loaded the machine is; ``--profile DIR`` records each node
with py-spy over the same window. The defaults take about 80 s:

    python -m bench.fanout_pg [--rounds 3] [--configs 100@50,300@50,1000@50]
        [--runs 10] [--seconds 5] [--coalesce-ms MS] [--profile DIR] [--quick]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import base_parser, percentile, print_table, write_json
from bench.fanout_procs import Watch, cpu_of, model_process, subscriber_process

DSN = os.environ.get(
    "SESSIONSTREAM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: the ports this bench's servers take: the model, then the nodes
BASE_PORT = int(os.environ.get("SESSIONSTREAM_BENCH_PORT", "26000"))
SECRET = "bench-secret-shared-by-every-node-0123456789"
S = "/api/campaigns/ai-chat-sessions"
TARGET_P99_MS = 50.0


# -- the nodes ------------------------------------------------------------------------------
@contextmanager
def cluster(
    nodes: int, model_url: str, logs: Path, coalesce_ms: float | None
) -> Iterator[tuple[list[str], str, list[int]]]:
    """``nodes`` servers on a throwaway schema: (their base URLs, an API token, pids)."""
    schema = f"bench_fanout_{uuid.uuid4().hex[:10]}"
    url = f"{DSN}{'&' if '?' in DSN else '?'}search_path={schema}"
    env = {
        **os.environ,
        "SESSIONSTREAM_DATABASE_URL": url,
        "SESSIONSTREAM_SECRET": SECRET,
        "SESSIONSTREAM_ENGINE": "openai",
        "OPENAI_BASE_URL": model_url,
        "OPENAI_API_KEY": "bench",
        "SESSIONSTREAM_MODEL": "bench-model",
        "SESSIONSTREAM_RATE_LIMIT": "0",
        "SESSIONSTREAM_AUTH_FAILURE_RATE": "0",
        "SESSIONSTREAM_MAX_CONNECTIONS_PER_USER": "100000",
        "SESSIONSTREAM_LOG_LEVEL": "WARNING",
    }
    if coalesce_ms is not None:
        env["SESSIONSTREAM_DELTA_COALESCE_MS"] = f"{coalesce_ms:g}"
    cli = [sys.executable, "-m", "sessionstream"]
    created = subprocess.run(
        [*cli, "users", "create", "bench"], env=env, capture_output=True, text=True, check=True
    )
    token = created.stdout.strip().splitlines()[-1]
    procs: list[subprocess.Popen[bytes]] = []
    bases = [f"http://127.0.0.1:{BASE_PORT + 1 + n}" for n in range(nodes)]
    try:
        for n, base in enumerate(bases):
            out = (logs / f"fanout-node-{n}.log").open("ab")
            port = base.rsplit(":", 1)[1]
            node_env = {**env, "SESSIONSTREAM_NODE_ID": f"bench-node-{n}"}
            procs.append(
                subprocess.Popen(
                    [*cli, "serve", "--port", port], env=node_env, stdout=out, stderr=out
                )
            )
        for base, proc in zip(bases, procs, strict=True):
            _wait_healthy(base, proc)
        yield bases, token, [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect(DSN)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()

        asyncio.run(drop())


@contextmanager
def profiled(pids: list[int], folder: Path | None) -> Iterator[None]:
    """py-spy (``pip install py-spy``; root) records each node from the tokens' start to
    the last frame (``--profile``): where the CPU a round measures goes."""
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    spies = [
        subprocess.Popen(
            [
                *(str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid)),
                *("--format", "raw", "--rate", "200", "--nonblocking"),
                *("--output", str(folder / f"node-{n}.txt")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n, pid in enumerate(pids)
    ]
    try:
        yield
    finally:
        for spy in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes what it has, then exits
        for spy in spies:
            spy.wait(60)


#: the ``/metrics`` counters that say whether subscribers are on the shared fanout
FANOUT_COUNTERS = (
    "sessionstream_realtime_fanout_joined_total",
    "sessionstream_realtime_fanout_detached_total",
    "sessionstream_realtime_lag_fallbacks_total",
)


def settle(bases: list[str], joined_before: float, subscribers: int) -> int:
    """Wait (at most 60 s) until every subscriber has caught up and joined its run's
    fanout, so a round measures live delivery, not the crowd's catch-up reads; the
    number that joined."""
    deadline = time.monotonic() + 60
    while True:
        joined = sum(fanout_counters(base)["fanout_joined"] for base in bases) - joined_before
        if joined >= subscribers or time.monotonic() > deadline:
            return int(joined)
        time.sleep(0.2)


def fanout_counters(base: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values = dict.fromkeys(FANOUT_COUNTERS, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in values:
            values[name] = float(value)
    return {name.split("realtime_")[1].removesuffix("_total"): v for name, v in values.items()}


def _wait_healthy(base: str, proc: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node {base} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"node {base} did not become healthy")


async def start_runs(bases: list[str], token: str, runs: int) -> list[tuple[int, str, str]]:
    """``runs`` turns, run *i* started on node *i* mod nodes: (node, run id, run token)."""
    h = {"Authorization": f"Bearer {token}"}
    started = []
    async with aiohttp.ClientSession(headers=h) as http:

        async def post(base: str, path: str, body: Any) -> Any:
            async with http.post(base + path, json=body) as resp:
                payload = await resp.json()
                assert resp.status < 300, (resp.status, payload)
                return payload

        for i in range(runs):
            base = bases[i % len(bases)]
            cid = (await post(base, "/api/campaigns", {"name": f"c{i}"}))["campaign"]["id"]
            seq = (await post(base, f"/api/campaigns/{cid}/nodes", {"name": "n"}))["node"]["id"]
            sid = (await post(base, S, {"campaign_id": cid, "node_id": seq}))["session"]["id"]
            turn = await post(base, f"{S}/{sid}/turn", {"message": "stream"})
            started.append((i % len(bases), turn["runId"], turn["publicAccessToken"]))
    return started


# -- a round ------------------------------------------------------------------------------
def _post(url: str, body: Any = None) -> None:
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def one_round(
    bases: list[str],
    token: str,
    pids: list[int],
    model: str,
    subscribers: int,
    runs: int,
    clients: int,
    tokens: int,
    pace_ms: float,
    profile: Path | None = None,
) -> dict[str, Any]:
    _post(model + "/reset", {"tokens": tokens, "pace_s": pace_ms / 1000})
    started = asyncio.run(start_runs(bases, token, runs))
    watches = []
    for j in range(subscribers):
        node_of_run, run_id, run_token = started[j % runs]
        node = (j // runs) % len(bases)
        url = f"{bases[node].replace('http', 'ws', 1)}/api/realtime/runs/{run_id}?token={run_token}"
        watches.append(Watch(url, local=node == node_of_run))
    joined_before = sum(fanout_counters(base)["fanout_joined"] for base in bases)
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for c in range(clients):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=subscriber_process, args=(watches[c::clients], child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(120) or pipe.recv() != "ready":
                raise TimeoutError("the subscribers did not connect")
        settled = settle(bases, joined_before, subscribers)
        load_before = os.getloadavg()[0]
        counted = [fanout_counters(base) for base in bases]
        spies = profiled(pids, profile)
        spies.__enter__()
        node_cpu = [cpu_of(pid) for pid in pids]
        began = time.monotonic()
        _post(model + "/go")
        local: list[float] = []
        remote: list[float] = []
        wrong = 0
        client_cpu = 0.0
        frames = 0
        to_writer: list[float] = []
        closes: dict[str, int] = {}
        from_writer: list[float] = []
        for pipe in pipes:
            if not pipe.poll(600):
                raise TimeoutError("the subscribers did not finish")
            (got_local, got_remote, got_wrong, got_cpu, got_frames, got_in, got_out, got_closes) = (
                pipe.recv()
            )
            for code, count in got_closes.items():
                closes[code] = closes.get(code, 0) + count
            frames += got_frames
            to_writer += got_in
            from_writer += got_out
            local += got_local
            remote += got_remote
            wrong += got_wrong
            client_cpu += got_cpu
        took = time.monotonic() - began
        node_cpu = [cpu_of(pid) - was for pid, was in zip(pids, node_cpu, strict=True)]
        spies.__exit__(None, None, None)
        load_after = os.getloadavg()[0]
        counters = {
            name: sum(
                fanout_counters(base)[name] - was[name]
                for base, was in zip(bases, counted, strict=True)
            )
            for name in counted[0]
        }
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    every = local + remote
    return {
        "tokens_received": len(every),
        "delta_frames": frames,
        "seconds": round(took, 2),
        "frames_lost_or_repeated": wrong,
        # channels a node closed before their run's end (4408: the client read too
        # slowly); each was opened again from its last seq
        "reopened_by_close_code": closes,
        "p50_ms": percentile(every, 0.5),
        "p99_ms": percentile(every, 0.99),
        "max_ms": max(every),
        # where the time goes: emission to the writer's timestamp (per token), and
        # that timestamp to arrival (per frame), ms resolution
        "to_writer_p50_ms": percentile(to_writer, 0.5),
        "to_writer_p99_ms": percentile(to_writer, 0.99),
        "from_writer_p50_ms": percentile(from_writer, 0.5),
        "from_writer_p99_ms": percentile(from_writer, 0.99),
        "local_p99_ms": percentile(local, 0.99) if local else None,
        "remote_p99_ms": percentile(remote, 0.99),
        # CPU per 1,000 frames delivered: what the fan-out costs, whatever the load
        "node_cpu_ms_per_1k_frames": round(sum(node_cpu) / frames * 1e6, 1),
        # CPU of the three nodes per delta committed (every subscriber of a run gets
        # each of its deltas once): the writing, NOTIFY, each node's read, and the
        # fan-out to that delta's subscribers
        "node_cpu_ms_per_delta": round(sum(node_cpu) / (frames * runs / subscribers) * 1e3, 3),
        # and per token the model emitted: coalescing moves with the load, tokens do not
        "node_cpu_ms_per_token": round(sum(node_cpu) / (runs * tokens) * 1e3, 3),
        "node_cpu_s": round(sum(node_cpu), 3),
        "client_cpu_ms_per_1k_frames": round(client_cpu / frames * 1e6, 1),
        "node_cpu_share": round(sum(node_cpu) / took, 2),
        # the nodes' fanout counters over the round: subscribers handed to the shared
        # fanout, handed back (fell behind), live buffers that overflowed
        "fanout": counters,
        # subscribers on the shared fanout when the tokens started (of ``subscribers``)
        "joined_at_start": settled,
        "load_1m_before": round(load_before, 2),
        "load_1m_after": round(load_after, 2),
    }


def main() -> None:
    parser = base_parser(__doc__)
    parser.add_argument(
        "--configs",
        default="100@50,300@50,1000@50",
        help="SUBSCRIBERS@PACE_MS pairs, comma-separated: subscribers, and ms between "
        "a run's tokens",
    )
    parser.add_argument("--runs", type=int, default=10, help="live runs watched at once")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="each run streams this long")
    parser.add_argument("--clients", type=int, default=2, help="subscriber processes")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="record each node with py-spy (collapsed stacks) into this folder",
    )
    parser.add_argument(
        "--coalesce-ms",
        type=float,
        default=None,
        help="SESSIONSTREAM_DELTA_COALESCE_MS for the nodes (unset: theirs)",
    )
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    configs = [(int(a), float(b)) for a, b in (c.split("@") for c in args.configs.split(","))]
    if args.quick:
        configs, args.seconds = [(100, 50.0)], 1.0
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    model = ctx.Process(target=model_process, args=(BASE_PORT, child))
    model.start()
    if not parent.poll(60) or parent.recv() != "ready":  # e.g. its port is taken
        model.kill()
        raise SystemExit(f"the model did not start on port {BASE_PORT}")
    model_base = f"http://127.0.0.1:{BASE_PORT}"
    results: list[tuple[int, float, int, list[dict[str, Any]]]] = []
    try:
        with cluster(args.nodes, model_base + "/v1", logs, args.coalesce_ms) as (
            bases,
            token,
            pids,
        ):
            for subscribers, pace_ms in configs:
                tokens = max(1, round(args.seconds * 1000 / pace_ms))
                rs: list[dict[str, Any]] = []
                results.append((subscribers, pace_ms, tokens, rs))
                for n in range(rounds):
                    r = one_round(
                        bases,
                        token,
                        pids,
                        model_base,
                        subscribers,
                        args.runs,
                        args.clients,
                        tokens,
                        pace_ms,
                        args.profile / f"{subscribers}-{n + 1}" if args.profile else None,
                    )
                    rs.append(r)
                    print(
                        f"{subscribers} subscribers, a token every {pace_ms:g} ms, round {n + 1}: "
                        f"{r['tokens_received']:,} tokens in {r['delta_frames']:,} frames, "
                        f"p50 {r['p50_ms']:.1f} ms "
                        f"p99 {r['p99_ms']:.1f} ms (local {r['local_p99_ms'] or 0:.1f}, "
                        f"remote {r['remote_p99_ms']:.1f}), lost/repeated "
                        f"{r['frames_lost_or_repeated']}, reopened {r['reopened_by_close_code']}, "
                        "node CPU "
                        f"{r['node_cpu_ms_per_1k_frames']} ms / 1k frames, "
                        f"{r['node_cpu_ms_per_delta']} ms / delta, "
                        f"{r['node_cpu_ms_per_token']} ms / token, fanout {r['fanout']}, "
                        f"joined at start {r['joined_at_start']}, "
                        f"load {r['load_1m_before']:.1f}-{r['load_1m_after']:.1f}",
                        flush=True,
                    )
    finally:
        parent.send("stop")
        model.join(10)
    summary = [summarise(s, p, t, rs, args.runs, args.nodes) for s, p, t, rs in results]
    print()
    print_table(
        [
            "subscribers",
            "tokens/s",
            "p50 ms",
            "p99 ms",
            "p99 local",
            "p99 remote",
            "p99 to writer",
            "p99 after",
            "lost",
            "reopened",
            "node ms/1k",
            "node ms/delta",
            "client ms/1k",
            "load",
        ],
        [
            [
                s["subscribers"],
                s["tokens_delivered_per_s"],
                s["median"]["p50_ms"],
                s["median"]["p99_ms"],
                s["median"].get("local_p99_ms", "-"),
                s["median"]["remote_p99_ms"],
                s["median"]["to_writer_p99_ms"],
                s["median"]["from_writer_p99_ms"],
                s["frames_lost_or_repeated"],
                sum(s["reopened_by_close_code"].values()),
                s["median"]["node_cpu_ms_per_1k_frames"],
                s["median"]["node_cpu_ms_per_delta"],
                s["median"]["client_cpu_ms_per_1k_frames"],
                f"{s['load_1m'][0]:.1f}-{s['load_1m'][1]:.1f}",
            ]
            for s in summary
        ],
    )
    print("to writer: a token's emission to its delta's recorded_at; after: recorded_at to arrival")
    print(
        f"target: p99 <= {TARGET_P99_MS:g} ms; medians of {rounds} round(s); {os.cpu_count()} cores"
    )
    write_json(
        "fanout_pg_quick" if args.quick else "fanout_pg",
        {
            "benchmark": "fanout_pg",
            "load": {
                "nodes": args.nodes,
                "runs": args.runs,
                "seconds_per_run": args.seconds,
                "delta_coalesce_ms": args.coalesce_ms,
                "subscriber_processes": args.clients,
            },
            "cpus": os.cpu_count(),
            "target_p99_ms": TARGET_P99_MS,
            "summary": summary,
            "rounds": [{"subscribers": s, "pace_ms": p, "rounds": rs} for s, p, _, rs in results],
        },
    )


def summarise(
    subscribers: int, pace_ms: float, tokens: int, rs: list[dict[str, Any]], runs: int, nodes: int
) -> dict[str, Any]:
    keys = (
        "p50_ms",
        "p99_ms",
        "local_p99_ms",
        "remote_p99_ms",
        "max_ms",
        "to_writer_p50_ms",
        "to_writer_p99_ms",
        "from_writer_p50_ms",
        "from_writer_p99_ms",
        "node_cpu_ms_per_1k_frames",
        "node_cpu_ms_per_delta",
        "node_cpu_ms_per_token",
        "node_cpu_s",
        "client_cpu_ms_per_1k_frames",
        "node_cpu_share",
    )
    med = {
        k: round(statistics.median(r[k] for r in rs), 2)
        for k in keys
        if all(r[k] is not None for r in rs)
    }
    loads = [x for r in rs for x in (r["load_1m_before"], r["load_1m_after"])]
    return {
        "subscribers": subscribers,
        "runs": runs,
        "nodes": nodes,
        "pace_ms": pace_ms,
        "tokens_per_run": tokens,
        "deltas_per_s": round(runs * 1000 / pace_ms, 1),
        "tokens_delivered_per_s": round(subscribers * 1000 / pace_ms, 1),
        "rounds": len(rs),
        "median": med,
        "frames_lost_or_repeated": sum(r["frames_lost_or_repeated"] for r in rs),
        "reopened_by_close_code": {
            code: sum(r["reopened_by_close_code"].get(code, 0) for r in rs)
            for code in sorted({c for r in rs for c in r["reopened_by_close_code"]})
        },
        "load_1m": [min(loads), max(loads)],
        "met": med["p99_ms"] <= TARGET_P99_MS,
    }


if __name__ == "__main__":
    main()
