"""History at scale: folding, rebuilding, and reading long sessions.

- ``fold``: session-projection throughput on realistic chat histories (per turn:
  a claim, the user and assistant messages, every third turn a skeleton and a
  draft revision, the release), 1,000 to 100,000 session events. Two paths:
  ``apply_session`` one event at a time (what an append and ``rebuild`` do; it
  must copy every list an event extends, so long histories cost more per
  event) and ``fold_session_events`` (time travel and bulk folds: each list
  copied once). Target: >= 100,000 events/s.
- ``rebuild``: ``store.rebuild()`` of a log holding a 1,000- and a
  100,000-event session (read, fold, write every document and snapshot), beside
  reading and decoding the same events with nothing else (the floor).
- ``get``: ``GET /api/campaigns/ai-chat-sessions/{id}`` through the real HTTP
  app for a session with 1,000 events and one with 100,000. Both rows are the
  same size (same messages, histories, skeleton and draft); the extra events
  are runs' streamed events, claims, releases and patches, so only the length
  of the history differs. Target: p50 ratio (100,000 / 1,000) <= 1.5.
- ``as_of``: ``GET ...?as_of=<position>`` at positions spread over the
  100,000-event session, with the store's snapshots (every 200 session
  events), beside the same requests after deleting its snapshots.
  Target: p50 <= 50 ms.

    python -m bench.history [--rounds 3] [--quick]

``--quick`` uses 20,000 events instead of 100,000 and fewer requests.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import base_parser, install_uvloop, median, print_table, stopwatch, write_json
from sessionstream import projections
from sessionstream.core.readmodels import SessionState
from sessionstream.core.settings import Settings
from sessionstream.eventstore.model import AppendRequest, NewEvent, RecordedEvent, row_to_event
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.sqlite.schema import EVENT_COLUMNS
from sessionstream.projections.session import apply_session, fold_session_events
from sessionstream.server.app import create_app
from sessionstream.services.accounts import create_user

FOLD_TARGET = 100_000
GET_TARGET = 1.5
AS_OF_TARGET_MS = 50.0
USER = {"actor": {"type": "user", "id": "bench"}}


# fold ---------------------------------------------------------------------------------------
def chat_history(session_events: int) -> list[RecordedEvent]:
    """A session stream of about ``session_events`` events shaped like real turns."""
    sid = str(uuid.uuid4())
    stream = f"session-{sid}"
    events: list[RecordedEvent] = []

    def add(kind: str, data: dict[str, Any]) -> None:
        n = len(events) + 1
        events.append(
            RecordedEvent(
                n, stream, n, str(n), kind, data, USER, None, "2026-01-01T00:00:00.000Z", ""
            )
        )

    add("session.created", {"id": sid, "user_id": "u", "campaign_id": "c", "node_id": "n"})
    turn = 0
    while len(events) < session_events:
        run_id = f"run_{turn:032x}"
        add("run.claimed", {"run_id": run_id, "kind": "turn", "task_status": "chat_processing"})
        add("message.appended", {"role": "user", "content": f"turn {turn}: " + "brief " * 20})
        add("message.appended", {"role": "assistant", "content": "a reply word " * 60})
        if turn % 3 == 0:
            skeleton = {"hook": f"hook {turn}", "blocks": [{"text": "x" * 80}] * 5}
            add("skeleton.revised", {"skeleton": skeleton, "run_id": run_id})
            add("draft.revised", {"draft_subject": f"s{turn}", "draft_body": "b" * 400})
        add("run.released", {"run_id": run_id, "outcome": "completed"})
        turn += 1
    return events


def fold_rate(events: list[RecordedEvent], bulk: bool) -> float:
    with stopwatch() as elapsed:
        if bulk:
            fold_session_events(None, events)
        else:
            state: SessionState | None = None
            for event in events:
                state = apply_session(state, event) or state
    return len(events) / elapsed()


def bench_fold(sizes: list[int], rounds: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for size in sizes:
        events = chat_history(size)
        # the two paths agree before either is timed
        one: SessionState | None = None
        for event in events:
            one = apply_session(one, event) or one
        assert fold_session_events(None, events) == one
        per_event = [fold_rate(events, bulk=False) for _ in range(rounds)]
        bulk = [fold_rate(events, bulk=True) for _ in range(rounds)]
        assert one is not None
        rows.append(
            {
                "session_events": len(events),
                "messages": len(one["row"]["messages"] or []),
                "bulk_events_per_s": round(median(bulk)),
                "per_event_events_per_s": round(median(per_event)),
                "ratio": round(median(bulk) / median(per_event), 2),
                "per_event_met": median(per_event) >= FOLD_TARGET,
                "samples": {
                    "bulk": [round(x) for x in bulk],
                    "per_event": [round(x) for x in per_event],
                },
            }
        )
    return {
        "subject": "fold_session_events (bulk: as_of)",
        "baseline": "apply_session one event at a time (appends, rebuild)",
        "target": f">= {FOLD_TARGET:,} events/s",
        "met": all(r["bulk_events_per_s"] >= FOLD_TARGET for r in rows),
        "rows": rows,
    }


# a long session in a real store -------------------------------------------------------------
def _run_events(run_id: str, sid: str, deltas: int) -> tuple[NewEvent, ...]:
    meta = {"actor": {"type": "run", "id": run_id}, "session_id": sid}
    corr = f"session-{sid}"
    out = [
        NewEvent(
            "run.created",
            {
                "run_id": run_id,
                "kind": "turn",
                "session_id": sid,
                "user_id": "bench",
                "input": {"message": "refine"},
            },
            meta,
            correlation_id=corr,
        ),
        NewEvent("run.started", {}, meta, correlation_id=corr),
    ]
    out += [
        NewEvent("message.delta", {"text": f"word{i} "}, meta, correlation_id=corr)
        for i in range(deltas)
    ]
    out += [
        NewEvent(
            "message.completed",
            {"message": {"role": "assistant", "content": "ok"}},
            meta,
            correlation_id=corr,
        ),
        NewEvent("run.completed", {"output": None}, meta, correlation_id=corr),
    ]
    return tuple(out)


async def write_session(store: SQLiteEventStore, user: str, total: int) -> tuple[str, int]:
    """A session of ``total`` events (its stream and its runs') whose row has a fixed size."""
    sid = str(uuid.uuid4())
    stream = f"session-{sid}"
    meta = {"actor": {"type": "user", "id": user}}
    base = [
        NewEvent(
            "session.created",
            {
                "id": sid,
                "user_id": user,
                "campaign_id": str(uuid.uuid4()),
                "node_id": str(uuid.uuid4()),
            },
            meta,
        )
    ]
    for i in range(10):
        base.append(NewEvent("message.appended", {"role": "user", "content": f"q{i} " * 40}, meta))
        base.append(
            NewEvent("message.appended", {"role": "assistant", "content": f"a{i} " * 80}, meta)
        )
    for i in range(3):
        base.append(
            NewEvent(
                "skeleton.revised", {"skeleton": {"hook": f"h{i}", "blocks": ["x" * 200] * 4}}, meta
            )
        )
        base.append(
            NewEvent("draft.revised", {"draft_subject": f"s{i}", "draft_body": "b" * 500}, meta)
        )
    await store.append(stream, base)
    written = len(base)
    cycle, pending, turn = 0, [], 0
    deltas = 12
    per_cycle = 5 + 4 + deltas
    while written + per_cycle <= total:
        run_id = "run_" + uuid.uuid4().hex
        session_events = (
            NewEvent(
                "run.claimed",
                {"run_id": run_id, "kind": "turn", "task_status": "chat_processing"},
                meta,
            ),
            NewEvent("session.patched", {"fields": {"title": f"title {turn % 10}"}}, meta),
            NewEvent(
                "session.patched", {"fields": {"draft_body": "b" * 499 + str(turn % 10)}}, meta
            ),
            NewEvent("session.patched", {"fields": {"draft_subject": f"s{turn % 10}"}}, meta),
            NewEvent("run.released", {"run_id": run_id, "outcome": "completed"}, meta),
        )
        pending.append(AppendRequest(stream, session_events[:1]))
        pending.append(AppendRequest(f"run-{run_id}", _run_events(run_id, sid, deltas)))
        pending.append(AppendRequest(stream, session_events[1:]))
        written += per_cycle
        turn += 1
        cycle += 1
        if cycle % 40 == 0:
            await store.transact(pending)
            pending = []
    while written < total:  # top up to the exact count with patches
        pending.append(
            AppendRequest(
                stream, (NewEvent("session.patched", {"fields": {"title": "title 0"}}, meta),)
            )
        )
        written += 1
    if pending:
        await store.transact(pending)
    return sid, written


async def build_log(path: Path, sizes: tuple[int, int]) -> dict[str, Any]:
    store = SQLiteEventStore(path, projections.ALL)
    async with store:
        user, token = await create_user(store, "bench")
        small, n_small = await write_session(store, user, sizes[0])
        large, n_large = await write_session(store, user, sizes[1])
        rows = [await store.get_doc("session", s) for s in (small, large)]
        assert all(r is not None for r in rows)
        sizes_json = [len(json.dumps(r.body["row"])) for r in rows if r is not None]
        return {
            "token": token,
            "small": small,
            "large": large,
            "events": (n_small, n_large),
            "row_bytes": sizes_json,
            "head": await store.head_position(),
        }


# rebuild ------------------------------------------------------------------------------------
def read_floor(path: Path) -> float:
    """Read and decode every event with plain sqlite3: what any rebuild must at least do."""
    conn = sqlite3.connect(path)
    with stopwatch() as elapsed:
        count, after = 0, 0
        while True:
            rows = conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE position > ? "
                "ORDER BY position LIMIT 5000",
                (after,),
            ).fetchall()
            if not rows:
                break
            count += len([row_to_event(r) for r in rows])
            after = rows[-1][0]
    conn.close()
    return count / elapsed()


async def rebuild_rate(path: Path) -> float:
    store = SQLiteEventStore(path, projections.ALL)
    async with store:
        with stopwatch() as elapsed:
            count = await store.rebuild()
    return count / elapsed()


# HTTP ---------------------------------------------------------------------------------------
async def serve(path: Path) -> tuple[web.AppRunner, str]:
    settings = Settings(
        db_path=str(path),
        secret="bench-secret-0123456789abcdef0123456789",
        rate_limit=0,
        log_level="WARNING",
    )
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def timed_get(
    http: aiohttp.ClientSession, url: str, params: dict[str, Any] | None = None
) -> float:
    started = time.perf_counter()
    async with http.get(url, params=params) as r:
        assert r.status == 200, await r.text()
        await r.read()
    return (time.perf_counter() - started) * 1000


async def bench_http(
    path: Path, log: dict[str, Any], requests: int, positions: int
) -> dict[str, Any]:
    runner, base = await serve(path)
    out: dict[str, Any] = {}
    try:
        headers = {"Authorization": f"Bearer {log['token']}"}
        async with aiohttp.ClientSession(base, headers=headers) as http:
            urls = {k: f"/api/campaigns/ai-chat-sessions/{log[k]}" for k in ("small", "large")}
            for url in urls.values():  # warm both the same way
                for _ in range(20):
                    await timed_get(http, url)
            times: dict[str, list[float]] = {"small": [], "large": []}
            for _ in range(requests):
                for key in ("small", "large"):
                    times[key].append(await timed_get(http, urls[key]))
            small, large = statistics.median(times["small"]), statistics.median(times["large"])
            out["get"] = {
                "subject": f"GET of a {log['events'][1]:,}-event session",
                "baseline": f"GET of a {log['events'][0]:,}-event session (same row size)",
                "events": list(log["events"]),
                "row_bytes": log["row_bytes"],
                "small_p50_ms": round(small, 3),
                "large_p50_ms": round(large, 3),
                "small_p99_ms": round(pct(times["small"], 0.99), 3),
                "large_p99_ms": round(pct(times["large"], 0.99), 3),
                "ratio": round(large / small, 3),
                "target": f"ratio <= {GET_TARGET}",
                "met": large / small <= GET_TARGET,
            }
            out["as_of"] = await bench_as_of(http, path, log, urls["large"], positions)
    finally:
        await runner.cleanup()
    return out


def spread(values: list[int], count: int) -> list[int]:
    step = max(1, len(values) // count)
    return values[::step][:count]


async def bench_as_of(
    http: aiohttp.ClientSession, path: Path, log: dict[str, Any], url: str, positions: int
) -> dict[str, Any]:
    stream = f"session-{log['large']}"
    conn = sqlite3.connect(path)
    all_positions = [
        r[0]
        for r in conn.execute(
            "SELECT position FROM events WHERE stream_id = ? ORDER BY version", (stream,)
        )
    ]
    snapshots = conn.execute(
        "SELECT COUNT(*) FROM snapshots WHERE stream_id = ?", (stream,)
    ).fetchone()[0]
    chosen = spread(all_positions[1:-1], positions)
    # correct before fast: a few answers against a plain fold of the log
    events = [
        row_to_event(r)
        for r in conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? ORDER BY version", (stream,)
        )
    ]
    for position in chosen[:: max(1, len(chosen) // 5)]:
        async with http.get(url, params={"as_of": position}) as r:
            body = await r.json()
        state = fold_session_events(None, [e for e in events if e.position <= position])
        assert state is not None and body["session"] == state["row"], position
    with_snapshots = [await timed_get(http, url, {"as_of": p}) for p in chosen]
    conn.execute("DELETE FROM snapshots WHERE stream_id = ?", (stream,))
    conn.commit()
    conn.close()
    few = chosen[:: max(1, len(chosen) // 8)]
    without = [await timed_get(http, url, {"as_of": p}) for p in few]
    p50 = statistics.median(with_snapshots)
    return {
        "subject": "as_of with snapshots",
        "baseline": "as_of after deleting the session's snapshots",
        "session_events": len(all_positions),
        "log_events": log["events"][1],
        "snapshots": snapshots,
        "positions": len(chosen),
        "p50_ms": round(p50, 3),
        "p95_ms": round(pct(with_snapshots, 0.95), 3),
        "max_ms": round(max(with_snapshots), 3),
        "without_snapshots_p50_ms": round(statistics.median(without), 3),
        "ratio": round(statistics.median(without) / p50, 2),
        "target": f"p50 <= {AS_OF_TARGET_MS} ms",
        "met": p50 <= AS_OF_TARGET_MS,
    }


# main ---------------------------------------------------------------------------------------
async def one_round(sizes: tuple[int, int], requests: int, positions: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.db"
        with stopwatch() as elapsed:
            log = await build_log(path, sizes)
        written = log["head"] / elapsed()
        floor = read_floor(path)
        rebuild = await rebuild_rate(path)
        result = await bench_http(path, log, requests, positions)
        result["rebuild"] = {
            "subject": "store.rebuild() (read, fold, write documents and snapshots)",
            "baseline": "read and decode every event (sqlite3), nothing else",
            "events": log["head"],
            "events_per_s": round(rebuild),
            "baseline_events_per_s": round(floor),
            "ratio": round(rebuild / floor, 3),
            "append_events_per_s": round(written),
        }
        return result


def main() -> None:
    parser = base_parser(__doc__)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    large = 20_000 if args.quick else 100_000
    fold_sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    loop = "uvloop" if install_uvloop() else "asyncio"
    print(f"fold: {', '.join(f'{s:,}' for s in fold_sizes)} session events, {rounds} round(s)")
    fold = bench_fold(fold_sizes, max(3, rounds))
    print_table(
        ["session events", "messages", "bulk ev/s", "per-event ev/s", "ratio"],
        [
            [
                r["session_events"],
                r["messages"],
                r["bulk_events_per_s"],
                r["per_event_events_per_s"],
                r["ratio"],
            ]
            for r in fold["rows"]
        ],
    )
    print(f"target {fold['target']} (bulk path): {'met' if fold['met'] else 'MISSED'}\n")
    results = [
        asyncio.run(one_round((1_000, large), 100 if args.quick else 300, 20 if args.quick else 40))
        for _ in range(rounds)
    ]

    def med(section: str, key: str) -> float:
        return median([r[section][key] for r in results])

    get, as_of, rebuild = (dict(results[len(results) // 2][k]) for k in ("get", "as_of", "rebuild"))
    for key in ("small_p50_ms", "large_p50_ms", "small_p99_ms", "large_p99_ms"):
        get[key] = med("get", key)
    get["ratio"] = round(get["large_p50_ms"] / get["small_p50_ms"], 3)
    get["met"] = get["ratio"] <= GET_TARGET
    for key in ("p50_ms", "p95_ms", "max_ms", "without_snapshots_p50_ms"):
        as_of[key] = med("as_of", key)
    as_of["ratio"] = round(as_of["without_snapshots_p50_ms"] / as_of["p50_ms"], 2)
    as_of["met"] = as_of["p50_ms"] <= AS_OF_TARGET_MS
    for key in ("events_per_s", "baseline_events_per_s", "append_events_per_s"):
        rebuild[key] = med("rebuild", key)
    rebuild["ratio"] = round(rebuild["events_per_s"] / rebuild["baseline_events_per_s"], 3)
    print_table(
        ["measure", "subject", "baseline", "ratio", "target"],
        [
            ["GET p50 ms", get["large_p50_ms"], get["small_p50_ms"], get["ratio"], get["target"]],
            ["GET p99 ms", get["large_p99_ms"], get["small_p99_ms"], "", ""],
            [
                "as_of p50 ms",
                as_of["p50_ms"],
                as_of["without_snapshots_p50_ms"],
                as_of["ratio"],
                as_of["target"],
            ],
            ["as_of p95 ms", as_of["p95_ms"], "", "", ""],
            [
                "rebuild ev/s",
                rebuild["events_per_s"],
                rebuild["baseline_events_per_s"],
                rebuild["ratio"],
                "",
            ],
        ],
    )
    print(
        f"\nGET {'met' if get['met'] else 'MISSED'}; as_of {'met' if as_of['met'] else 'MISSED'} "
        f"({as_of['snapshots']} snapshots over {as_of['session_events']:,} session events of a "
        f"{as_of['log_events']:,}-event history); rows {get['row_bytes']} bytes"
    )
    write_json(
        "history",
        {
            "benchmark": "history",
            "loop": loop,
            "rounds": rounds,
            "quick": args.quick,
            "fold": fold,
            "get": get,
            "as_of": as_of,
            "rebuild": rebuild,
        },
    )


if __name__ == "__main__":
    main()
