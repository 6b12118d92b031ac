"""Two sessionstream nodes on a pg_auto_failover formation, under load, through three faults.

The formation (``formation.py``) is a monitor, a primary and a synchronous
standby; the nodes use its multi-host URI (``target_session_attrs=read-write``)
as pg_autoctl prints it, with a user name. Clients PATCH, start turns and
read through both nodes while websocket subscribers follow sessions and runs
(each run on the node that did not start it), and a probe writes straight to
each database node. Then, one after the other:

1. a planned failover (``pg_autoctl perform failover``);
2. the primary stopped (``pg_autoctl stop``), started again once it is replaced;
3. the primary frozen (SIGSTOP of its postmaster and children), thawed once
   sessionstream writes through the new primary.

Per fault the test prints the figures of docs/guides/failover.md: acknowledged
writes lost, 5xx answers, seconds of write unavailability beyond the
database's own (from the probe's first write to the new primary to the
first write sessionstream acknowledged), turns failed and duplicate or wrong
``run.released``. Afterwards ``sessionstream verify`` must pass, no session
may be left busy, and every subscriber must have received exactly the log's
events, once each and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sessionstream.core.settings import Settings
from tests.failover.figures import (
    Fault,
    Figures,
    delivered,
    figures,
    read_log,
    subscriber_problems,
)
from tests.failover.formation import (
    DATABASE,
    Formation,
    FormationUnavailable,
    free_block,
)
from tests.failover.traffic import PROBE_TABLE, Followers, Load, WriteProbe
from tests.pg import unavailable
from tests.serverproc import ServerProcess, base_env, call, cli, create_user
from tests.torture.harness import check_log_shape, wait_for
from tests.torture.live import seed
from tests.torture.report import report

pytestmark = [pytest.mark.failover, pytest.mark.timeout(600)]

SESSIONS = 6
WATCHED = 3
CLIENTS_PER_NODE = 3
#: how long a fault may take to let the database write again; how long sessionstream
#: may then take while the fault lasts, and once more after it was repaired
DB_BOUND_S = 90.0
SS_BOUND_S = 30.0
#: time for the turns in flight at a fault to end before the next fault; load before each
SETTLE_S = 3.0
STEADY_S = 3.0
#: the targets of issue 22
BEYOND_TARGET_S = 5.0


#: a folder to keep the nodes', pg_autoctl's and PostgreSQL's logs in (else they go)
KEEP_LOGS = os.environ.get("SESSIONSTREAM_FAILOVER_LOGS")


@contextlib.contextmanager
def formation_up() -> Iterator[Formation]:
    try:
        formation = Formation(free_block())
    except FormationUnavailable as exc:
        unavailable(str(exc))
        raise AssertionError("unreachable") from exc
    try:
        formation.start()
        primary = formation.ports[formation.primary()]
        formation.sql(
            primary,
            f"CREATE SCHEMA failover_probe; CREATE TABLE {PROBE_TABLE} (at timestamptz NOT NULL)",
            database=DATABASE,
        )
        yield formation
    finally:
        formation.close(Path(KEEP_LOGS) if KEEP_LOGS else None)


def make_sessions(base_url: str, token: str, count: int) -> list[str]:
    campaign = seed(base_url, token)
    sessions = [campaign.session_id]
    body = {"campaign_id": campaign.campaign_id, "node_id": campaign.node_id}
    while len(sessions) < count:
        status, created, _ = call(base_url, token, "POST", "/api/campaigns/ai-chat-sessions", body)
        assert status == 201, created
        sessions.append(created["session"]["id"])
    return sessions


def first_ack(load: Load, after: float, within: float) -> float | None:
    """The first PATCH acknowledged at or after ``after``, waiting up to ``within``."""
    deadline = time.monotonic() + within
    while True:
        acked = [p.at for p in load.record.patches if p.at >= after]
        if acked:
            return min(acked)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def inject(formation: Formation, fault: Fault, load: Load, probe: WriteProbe) -> None:
    """Inject ``fault``, measure when the database and then sessionstream write again, repair.

    The stopped primary is started again and the frozen one thawed only once
    sessionstream wrote through the new primary (or ``SS_BOUND_S`` passed):
    a node must get past a dead or hung host by itself, not because it came back.
    """
    old = fault.old_primary
    failover = None
    if fault.name == "planned failover":
        failover = formation.perform_failover()
    elif fault.name == "primary stopped":
        formation.stop_node(old)
    else:
        formation.freeze(old)
    try:
        deadline = time.monotonic() + DB_BOUND_S
        while fault.db_writable is None and time.monotonic() < deadline:
            fault.db_writable = probe.first_write(fault.new_primary, fault.started)
            time.sleep(0.05)
        if fault.db_writable is not None:
            fault.ss_writable = first_ack(load, fault.db_writable, SS_BOUND_S)
    finally:
        if fault.name == "primary stopped":
            formation.start_node(old)
        elif fault.name == "primary frozen":
            formation.thaw()
        if failover is not None:
            failover.wait(60)
    if fault.db_writable is not None and fault.ss_writable is None:
        fault.ss_writable = first_ack(load, fault.db_writable, SS_BOUND_S)
        fault.repaired_first = True
    formation.wait_stable(120)


def writing_again(load: Load, within: float) -> None:
    since = time.time()
    wait_for(lambda: load.last_ack() > since, within, "the load to write again")


def run_faults(formation: Formation, load: Load, probe: WriteProbe) -> list[Fault]:
    faults: list[Fault] = []
    for name in ("planned failover", "primary stopped", "primary frozen"):
        formation.wait_stable(120)
        writing_again(load, 60)
        time.sleep(STEADY_S)
        old = formation.primary()
        new = next(n for n in formation.names if n != old)
        fault = Fault(name, old, new, time.time())
        if faults:
            faults[-1].ended = fault.started
        faults.append(fault)
        inject(formation, fault, load, probe)
        time.sleep(SETTLE_S)
    return faults


def settled(uri: str) -> Callable[[], bool]:
    """No run without an end, no session busy: what recovery must leave."""

    def check() -> bool:
        log = asyncio.run(read_log(uri))
        runs = log.docs["run"].values()
        sessions = log.docs["session"].values()
        return all(r["status"] not in ("queued", "running") for r in runs) and not any(
            s["row"]["task_status"] for s in sessions
        )

    return check


def test_two_nodes_ride_through_three_failovers(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    began = time.monotonic()
    with formation_up() as formation, contextlib.ExitStack() as cleanup:
        uri = formation.uri()
        store = ["--database-url", uri]
        token = create_user(store)
        env = base_env(
            SESSIONSTREAM_OFFLINE_PACE_MS="20",
            SESSIONSTREAM_DELTA_COALESCE_MS="20",
            SESSIONSTREAM_LOG_LEVEL="INFO",
        )
        nodes = []
        for n in range(2):
            node = ServerProcess(
                store,
                port=formation.monitor_port + 3 + n,
                env=env,
                log_path=Path(KEEP_LOGS or tmp_path) / f"node-{n}.log",
            )
            cleanup.callback(node.stop)
            nodes.append(node.start(timeout=60))
        sessions = make_sessions(nodes[0].base_url, token, SESSIONS + 2)
        work, pings = sessions[:SESSIONS], sessions[SESSIONS:]
        subscribers = [Followers(node.base_url, token, work[:WATCHED]) for node in nodes]
        load = Load(
            [node.base_url for node in nodes],
            token,
            work,
            pings,
            clients_per_node=CLIENTS_PER_NODE,
            on_turn=lambda node, turn: subscribers[1 - node].follow_run(turn),
        )
        probe = WriteProbe(formation.ports)
        for subs in subscribers:
            subs.start_and_wait()
            cleanup.callback(stop_thread, subs)
        probe.start()
        cleanup.callback(stop_thread, probe)
        setup = time.monotonic() - began
        load_began = time.time()
        load.start()
        cleanup.callback(stop_thread, load)

        faults = run_faults(formation, load, probe)

        load.stop()
        faults[-1].ended = time.time()
        probe.stop()
        wait_for(settled(uri), 60, "every run to end and every session to be free")
        wait_for(lambda: all(s.runs_done() for s in subscribers), 30, "every run subscriber")
        log = asyncio.run(read_log(uri))
        deadline = time.monotonic() + 30  # for every subscriber to catch up with the log
        while subscriber_problems(log, subscribers, work[:WATCHED]):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for subs in subscribers:
            subs.stop()
        for node in nodes:
            node.stop()
        check_log_shape(log.rows)
        cli(["verify", "--database-url", uri])  # raises with its output unless it passes
        diverged = subscriber_problems(log, subscribers, work[:WATCHED])
        unhandled = sum(unhandled_errors(node.log_path) for node in nodes)
        results = figures(faults, load.record, log, load_began)
    elapsed = time.monotonic() - began
    publish(request, results, delivered(subscribers), diverged, unhandled, (setup, elapsed))
    assert_figures(results)
    # every subscriber got exactly the log's events: no frame of a commit the failover
    # took back (a node publishes only durable commits, docs/guides/failover.md)
    assert not diverged, diverged[:10]


def unhandled_errors(log_path: Path | None) -> int:
    """Errors no handler translated (the server logs each as "unhandled error")."""
    if log_path is None or not log_path.exists():
        return 0
    with log_path.open(errors="replace") as lines:
        return sum("unhandled error" in line or "Error handling request" in line for line in lines)


def stop_thread(thread: Followers | WriteProbe | Load) -> None:
    if thread.is_alive():
        thread.stop()


def publish(
    request: pytest.FixtureRequest,
    results: list[Figures],
    frames: int,
    diverged: list[str],
    unhandled: int,
    took: tuple[float, float],
) -> None:
    """The figures as a table (docs/guides/failover.md), in pytest's summary as well."""
    lines = [
        f"failover: {took[1]:.0f} s ({took[0]:.0f} s to set up the formation and the nodes), "
        f"load average {os.getloadavg()[0]:.1f}; subscribers received {frames} frames, "
        f"{len(diverged)} subscriptions differ from the log; {unhandled} unhandled errors "
        "in the nodes' logs",
        *Figures.HEADER.splitlines(),
        *(f.row() for f in results),
    ]
    for f in results[1:]:
        lines.append(
            f"{f.fault}: 5xx answers: {f.server_errors} ({f.unavailable} 503 with Retry-After, "
            f"{f.no_retry_after} without); beyond the database's own failover: "
            f"{'never' if f.beyond_s is None else f'{f.beyond_s:.1f} s'}"
        )
    for f in results:
        lines.extend(f"{f.fault}: {note}" for note in f.notes[:6])
    lines.extend(f"subscriber: {problem}" for problem in diverged[:10])
    for line in lines:
        report(request.config, line)
        print(line)


def assert_figures(results: list[Figures]) -> None:
    """Issue 22's targets: nothing acknowledged lost; no 5xx at all, not even a 503 with
    ``Retry-After`` (requests wait for the new primary: ``SESSIONSTREAM_STORAGE_WAIT_S``);
    sessionstream writing within ``BEYOND_TARGET_S`` of the database; no turn failed by an
    outage shorter than ``SESSIONSTREAM_RUN_STORAGE_WAIT_S`` (the nodes run with its
    default); exactly one ``run.released`` a run, with its outcome."""
    bound = float(Settings.model_fields["run_storage_wait_s"].default)
    for f in results:
        assert f.acked > 0, f"{f.fault}: nothing was acknowledged"
        assert f.lost == 0, f.row()
        assert f.server_errors == 0, f"{f.row()} {f.notes}"
        assert f.bad_releases == 0, f"{f.row()} {f.notes}"
        if f.outage_s is None or f.outage_s < bound:
            assert f.turns_failed == 0, f"{f.row()} {f.notes}"
    for f in results[1:]:
        assert f.db_own_s is not None, f"{f.fault}: the database never took writes again"
        assert f.beyond_s is not None, f"{f.fault}: sessionstream never wrote again"
        assert f.beyond_s <= BEYOND_TARGET_S, f.row()
