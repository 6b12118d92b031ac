"""SIGKILL the real server in the middle of a streaming turn, restart, check the log."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sessionstream.eventstore.packing import unpack_all
from tests import serverproc
from tests.serverproc import ServerProcess, base_env, create_user


def call(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, parsed, _ = serverproc.call(base, token, method, path, body)
    return status, parsed


def log_rows(db: Path) -> list[tuple[int, str, int, str, str]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one snapshot: a compaction between two reads shows twice
        rows: list[tuple[int, str, int, str, str]] = conn.execute(
            "SELECT position, stream_id, version, event_id, type FROM events ORDER BY position"
        ).fetchall()
        # a finished run's deltas are packed beside the rows (eventstore/packing.py)
        packed = unpack_all(conn.execute("SELECT stream_id, correlation_id, body FROM packs"))
        rows.extend((e.position, e.stream_id, e.version, e.event_id, e.type) for e in packed)
        return sorted(rows)
    finally:
        conn.close()


def test_sigkill_mid_turn_loses_nothing_and_frees_the_session(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    store = ["--db", str(db)]
    token = create_user(store)
    env = base_env(SESSIONSTREAM_OFFLINE_PACE_MS="15")
    server = ServerProcess(store, env=env, log_path=tmp_path / "server.log").start()
    try:
        base = server.base_url
        _, campaign = call(base, token, "POST", "/api/campaigns", {"name": "c"})
        cid = campaign["campaign"]["id"]
        _, node = call(base, token, "POST", f"/api/campaigns/{cid}/nodes", {"name": "n"})
        _, created = call(
            base,
            token,
            "POST",
            "/api/campaigns/ai-chat-sessions",
            {"campaign_id": cid, "node_id": node["node"]["id"]},
        )
        sid = created["session"]["id"]
        status, started = call(
            base,
            token,
            "POST",
            f"/api/campaigns/ai-chat-sessions/{sid}/turn",
            {"message": "Write an intro email for enterprise VPs of Sales about time-to-ROI"},
        )
        assert status == 200, started
        run_id = started["runId"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _, run = call(base, token, "GET", f"/api/runs/{run_id}")
            if run["run"]["seq"] >= 5:
                break
            time.sleep(0.01)
        assert run["run"]["status"] == "running", "the turn finished before the kill"
        before = log_rows(db)
        server.kill()
    finally:
        server.kill()
    after_kill = log_rows(db)
    # every event committed before the kill is still there, in the same place
    assert after_kill[: len(before)] == before

    restarted = ServerProcess(store, env=env, log_path=tmp_path / "server.log").start()
    try:
        base = restarted.base_url
        status, body = call(base, token, "GET", f"/api/campaigns/ai-chat-sessions/{sid}")
        assert status == 200 and body["session"]["task_status"] is None
        _, run = call(base, token, "GET", f"/api/runs/{run_id}")
        assert run["run"]["status"] == "failed" and run["run"]["error"] == "interrupted"
        # the session is immediately usable again
        status, _ = call(
            base, token, "POST", f"/api/campaigns/ai-chat-sessions/{sid}/turn", {"message": "hi"}
        )
        assert status == 200
    finally:
        restarted.stop()
    rows = log_rows(db)
    assert rows[: len(after_kill)] == after_kill
    positions = [r[0] for r in rows]
    assert positions == list(range(1, len(rows) + 1)), "global positions have a gap"
    assert len({r[3] for r in rows}) == len(rows), "an event id is duplicated"
    run_types = [r[4] for r in rows if r[1] == f"run-{run_id}"]
    terminal = [t for t in run_types if t in ("run.completed", "run.failed", "run.canceled")]
    assert terminal == ["run.failed"]
    versions = [r[2] for r in rows if r[1] == f"run-{run_id}"]
    assert versions == list(range(1, len(versions) + 1))
