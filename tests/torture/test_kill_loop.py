"""SIGKILL the real server again and again under load; after every restart, nothing is lost.

The server runs as a subprocess on a SQLite file with concurrent clients
patching, turning and reading, and subscribers following sessions and runs
through the Python client. At seeded random moments it is killed with
SIGKILL (no shutdown handler, no flush) and restarted on the same port.
After each kill and restart:

- ``sessionstream verify --db`` passes on the crash image (hash chains, read
  models equal to a rebuild; run on a copy, while the server restarts), and
  the log has no gap, no duplicate id, no stream with a skipped version or
  two terminal events;
- every append a client saw acknowledged (a PATCH answered 200 with an ETag,
  a turn answered with its run id) is in the log exactly once;
- once recovery ran, no session is busy and no run is left without an end.

At the end every subscriber must have received exactly the log's events
for what it followed, in order, across all the restarts.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess, base_env, call, cli, create_user
from tests.torture.harness import (
    TERMINAL,
    Row,
    Subscribers,
    Workers,
    check_acked,
    check_log_shape,
    check_nothing_busy,
    read_docs,
    read_log,
    wait_for,
)
from tests.torture.live import seed
from tests.torture.report import report

SESSIONS = 5
WATCHED = 3  # sessions followed by a session subscription
CLIENTS = 8

pytestmark = pytest.mark.timeout(900)


def verify(db: Path) -> str:
    """``sessionstream verify --db``; raises with its output when it does not exit 0."""
    return cli(["verify", "--db", str(db)])


class CrashImage:
    """A copy of the database files as the kill left them, verified in the background.

    ``sessionstream verify`` takes a couple of seconds (mostly interpreter
    start-up); running it on a copy lets the server restart meanwhile without
    recovery's writes racing the verifier's reads.
    """

    def __init__(self, db: Path, number: int) -> None:
        self.path = db.with_name(f"crash-{number}.db")
        for suffix in ("", "-wal"):
            source = Path(f"{db}{suffix}")
            if source.exists():
                shutil.copyfile(source, f"{self.path}{suffix}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sessionstream", "verify", "--db", str(self.path)],
            env=base_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def check(self) -> None:
        output, _ = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, f"verify failed on {self.path}:\n{output}"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def session_positions(rows: list[Row], sid: str) -> list[int]:
    key = f"session-{sid}"
    return [r.position for r in rows if r.stream_id == key or r.correlation_id == key]


def make_sessions(base_url: str, token: str) -> list[str]:
    campaign = seed(base_url, token)
    sessions = [campaign.session_id]
    for _ in range(SESSIONS - 1):
        status, body, _ = call(
            base_url,
            token,
            "POST",
            "/api/campaigns/ai-chat-sessions",
            {"campaign_id": campaign.campaign_id, "node_id": campaign.node_id},
        )
        assert status == 201, body
        sessions.append(body["session"]["id"])
    return sessions


def test_sigkill_loop_loses_nothing(
    tmp_path: Path, torture_kills: int, torture_seed: int, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(torture_seed)
    db = tmp_path / "torture.db"
    store = ["--db", str(db)]
    token = create_user(store)
    env = base_env(SESSIONSTREAM_OFFLINE_PACE_MS="1", SESSIONSTREAM_DELTA_COALESCE_MS="10")
    log_path = tmp_path / "server.log"
    server = ServerProcess(store, env=env, log_path=log_path).start()
    try:
        sessions = make_sessions(server.base_url, token)
    except BaseException:
        server.stop()
        raise
    subscribers = Subscribers(server.base_url, token, sessions[:WATCHED])
    workers = Workers(
        server.base_url,
        token,
        sessions,
        clients=CLIENTS,
        seed=torture_seed,
        on_turn=subscribers.follow_run,
    )
    kills = 0
    images: list[CrashImage] = []
    try:
        subscribers.start_and_wait()
        workers.start()
        workers.resume()
        for _ in range(torture_kills):
            time.sleep(rng.uniform(0.15, 1.0))
            server.kill()
            workers.pause()
            kills += 1
            acked_patches, acked_turns = len(workers.acks.patches), len(workers.acks.turns)
            rows = read_log(db)
            check_log_shape(rows)
            check_acked(rows, workers.acks, acked_patches, acked_turns)
            images.append(CrashImage(db, kills))
            # bound first, started second: a restart that fails is still stopped below
            server = ServerProcess(store, port=server.port, env=env, log_path=log_path)
            server.start()
            check_nothing_busy(db)  # recovery runs before the server answers /healthz
            workers.resume()
            if len(images) > 1:
                images.pop(0).check()
        # wind down: no new work, every run ends, every subscriber catches up
        time.sleep(0.3)
        workers.pause()
        wait_for(
            lambda: all(
                d["status"] not in ("queued", "running") for d in read_docs(db, "run").values()
            ),
            30,
            "every run to end",
        )
        wait_for(subscribers.runs_done, 30, "every run subscriber to see its run end")
        final = read_log(db)
        wait_for(
            lambda: all(
                [f["position"] for f in subscribers.session_frames[s]]
                == session_positions(final, s)
                for s in sessions[:WATCHED]
            ),
            30,
            "every session subscriber to catch up with the log",
        )
        for image in images:
            image.check()
    finally:
        # each step runs even if an earlier one raises: never leave a server behind
        try:
            if workers.is_alive():
                workers.stop()
        finally:
            try:
                if subscribers.is_alive():
                    subscribers.stop()
            finally:
                server.stop()
                for image in images:
                    image.proc.kill()

    rows = read_log(db)
    check_log_shape(rows)
    verify(db)
    acked = check_acked(rows, workers.acks, len(workers.acks.patches), len(workers.acks.turns))
    check_nothing_busy(db)

    # subscribers: exactly the log's events, in order, once each, across every restart
    delivered = 0
    for sid in sessions[:WATCHED]:
        got = [f["position"] for f in subscribers.session_frames[sid]]
        assert got == session_positions(rows, sid), f"session {sid} subscriber diverged"
        delivered += len(got)
    by_run: dict[str, list[Row]] = {}
    for r in rows:
        if r.stream_id.startswith("run-"):
            by_run.setdefault(r.stream_id[4:], []).append(r)
    for run_id, frames in subscribers.run_frames.items():
        logged = by_run[run_id]
        assert [f["seq"] for f in frames] == [r.version for r in logged], run_id
        assert [f["type"] for f in frames] == [r.type for r in logged], run_id
        assert frames[-1]["type"] in TERMINAL
        delivered += len(frames)

    assert kills == torture_kills
    assert acked > 0 and workers.acks.turns, "the load never got anything acknowledged"
    interrupted = sum(
        1 for r in rows if r.type == "run.failed" and r.data.get("error") == "interrupted"
    )
    line = (
        f"torture: {kills} SIGKILLs survived (seed {torture_seed}); "
        f"{acked} acknowledged appends verified ({len(workers.acks.patches)} patches, "
        f"{len(workers.acks.turns)} turns); {len(rows)} events verified; "
        f"{delivered} subscriber frames matched the log; {interrupted} runs ended by recovery; "
        f"{workers.acks.cut_off} requests cut off by kills"
    )
    report(request.config, line)
    print(line)
