"""A pg_auto_failover formation on one machine: a monitor, a primary and a synchronous standby.

Everything runs as the ``postgres`` user (PostgreSQL refuses root) from one
folder under /tmp, on ports of our own, never the machine's PostgreSQL at
5432. pg_autoctl keeps its configuration and state under ``XDG_CONFIG_HOME``
and ``XDG_DATA_HOME``; both point into that folder, so removing it removes
every trace. ``close()`` tears everything down whatever state a failed test
left it in: it thaws a frozen node, asks each pg_autoctl to stop, then kills
what is left of the process groups it started, then removes the folder.

The monitor's health checks are tuned down (``MONITOR_SETTINGS``) so that a
failover takes seconds rather than the default minute; the figures the test
prints are measured against this tuning, and docs/guides/failover.md says
which settings they correspond to.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

DATABASE = "sessionstream"
#: the monitor's health checks and timeouts (``pgautofailover.*``), in milliseconds; the
#: defaults are 5000, 5000, 2, 2000, 20000, 30000 and 10000 (about 50 s to fail over)
MONITOR_SETTINGS: dict[str, int] = {
    "health_check_period": 1000,
    "health_check_timeout": 1000,
    "health_check_max_retries": 1,
    "health_check_retry_delay": 500,
    "node_considered_unhealthy_timeout": 3000,
    "primary_demote_timeout": 4000,
    "startup_grace_period": 2000,
}
#: first port tried; the block is monitor, node1, node2, then the two sessionstream nodes
PORT_BASE = int(os.environ.get("SESSIONSTREAM_FAILOVER_PORT", "23500"))
PORTS_PER_BLOCK = 5


class FormationUnavailable(RuntimeError):
    """pg_auto_failover cannot run here (not root, or the package is missing)."""


def pg_bindir() -> Path:
    """The PostgreSQL whose extension folder has pg_auto_failover's monitor extension."""
    if shutil.which("pg_autoctl") is None:
        raise FormationUnavailable("pg_autoctl is not installed (postgresql-NN-auto-failover)")
    for control in sorted(Path("/usr/share/postgresql").glob("*/extension/pgautofailover.control")):
        bindir = Path("/usr/lib/postgresql") / control.parent.parent.name / "bin"
        if (bindir / "pg_ctl").exists():
            return bindir
    raise FormationUnavailable("no PostgreSQL has the pgautofailover extension installed")


def free_block() -> int:
    """The first block of ``PORTS_PER_BLOCK`` ports from ``PORT_BASE`` that nobody listens on."""
    for base in range(PORT_BASE, PORT_BASE + 100, 10):
        if all(_port_free(base + n) for n in range(PORTS_PER_BLOCK)):
            return base
    raise FormationUnavailable(f"no free block of ports in {PORT_BASE}..{PORT_BASE + 100}")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True, slots=True)
class NodeState:
    name: str
    port: int
    reported: str
    goal: str


class Formation:
    """Create with ``start()``, always ``close()``; ``node1`` is the first primary."""

    names = ("node1", "node2")

    def __init__(self, base_port: int) -> None:
        if os.geteuid() != 0:
            raise FormationUnavailable("the failover test runs pg_autoctl as postgres: needs root")
        self.bindir = pg_bindir()
        self.monitor_port = base_port
        self.ports = {"node1": base_port + 1, "node2": base_port + 2}
        self.root = Path(tempfile.mkdtemp(prefix="sessionstream-failover-", dir="/tmp"))
        shutil.chown(self.root, "postgres", "postgres")
        # Debian's PostgreSQL puts its sockets here, and pg_autoctl's keepers talk to their
        # own PostgreSQL through them; the folder exists once any cluster ran since boot
        sockets = Path("/var/run/postgresql")
        if not sockets.exists():
            sockets.mkdir(mode=0o2775)
            shutil.chown(sockets, "postgres", "postgres")
        self.env = {
            "PATH": f"{self.bindir}:/usr/bin:/bin",
            "HOME": str(self.root),
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_DATA_HOME": str(self.root / "data"),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "PGHOST": "127.0.0.1",
            "LANG": "C.UTF-8",
        }
        self.services: list[subprocess.Popen[bytes]] = []
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.frozen: list[int] = []

    # paths and addresses ---------------------------------------------------------------
    def pgdata(self, name: str) -> Path:
        return self.root / name

    @property
    def monitor_url(self) -> str:
        return f"postgres://autoctl_node@127.0.0.1:{self.monitor_port}/pg_auto_failover?sslmode=disable"

    def uri(self) -> str:
        """The formation's multi-host URI as ``pg_autoctl show uri`` prints it, with a user."""
        monitor = str(self.pgdata("monitor"))
        out = self._autoctl(["show", "uri", "--formation", "default", "--pgdata", monitor])
        uri = out.strip().split("\n")[-1].split()[-1]
        assert uri.startswith("postgres://"), out
        return uri.replace("postgres://", "postgresql://postgres@", 1)

    # running commands as postgres ------------------------------------------------------
    def _autoctl(self, args: Sequence[str], timeout: float = 120) -> str:
        done = subprocess.run(
            ["pg_autoctl", *args],
            user="postgres",
            group="postgres",
            extra_groups=[],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_autoctl {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def sql(self, port: int, *queries: str, database: str = "postgres", timeout: float = 10) -> str:
        """psql as postgres; each query in its own transaction (ALTER SYSTEM needs that)."""
        commands = [arg for query in queries for arg in ("-c", query)]
        done = subprocess.run(
            [
                "psql",
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-p",
                str(port),
                "-d",
                database,
                "-U",
                "postgres",
                *commands,
            ],
            user="postgres",
            group="postgres",
            extra_groups=[],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql -p {port}: {done.stderr.strip()}")
        return done.stdout

    def _service(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        """A long-running pg_autoctl in its own process group, so ``close()`` can end it whole."""
        log = open(self.root / f"{name}.log", "ab")  # the child keeps its own copy
        try:
            proc = subprocess.Popen(
                ["pg_autoctl", *args],
                user="postgres",
                group="postgres",
                extra_groups=[],
                env=self.env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self.services.append(proc)
        self.running[name] = proc
        return proc

    # creating ---------------------------------------------------------------------------
    def start(self, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        pgctl = str(self.bindir / "pg_ctl")
        self._autoctl(
            ["create", "monitor", "--pgdata", str(self.pgdata("monitor")), "--pgctl", pgctl,
             "--pgport", str(self.monitor_port), "--hostname", "127.0.0.1", "--auth", "trust",
             "--no-ssl"],
            timeout=max(1.0, deadline - time.monotonic()),
        )  # fmt: skip
        self._service("monitor", ["run", "--pgdata", str(self.pgdata("monitor"))])
        self._until(lambda: self._answers(self.monitor_port), deadline, "the monitor to start")
        tuned = [f"ALTER SYSTEM SET pgautofailover.{k} = {v}" for k, v in MONITOR_SETTINGS.items()]
        self.sql(self.monitor_port, *tuned, "SELECT pg_reload_conf()", database="pg_auto_failover")
        for name in self.names:
            self._service(
                name,
                ["create", "postgres", "--pgdata", str(self.pgdata(name)), "--pgctl", pgctl,
                 "--pgport", str(self.ports[name]), "--hostname", "127.0.0.1", "--listen",
                 "127.0.0.1", "--name", name, "--dbname", DATABASE, "--auth", "trust", "--no-ssl",
                 "--monitor", self.monitor_url, "--run"],
            )  # fmt: skip
            if name == "node1":
                self._until(
                    lambda: any(n.reported == "single" for n in self.states()),
                    deadline,
                    "node1 to run as a single primary",
                )
        self.wait_stable(max(1.0, deadline - time.monotonic()))

    # observing --------------------------------------------------------------------------
    def _answers(self, port: int) -> bool:
        try:
            self.sql(port, "SELECT 1", timeout=3)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return True

    def states(self) -> list[NodeState]:
        """What the monitor knows of each data node (empty while it does not answer)."""
        try:
            out = self.sql(
                self.monitor_port,
                "SELECT nodename, nodeport, reportedstate, goalstate FROM pgautofailover.node "
                "ORDER BY nodeid",
                database="pg_auto_failover",
                timeout=5,
            )
        except (RuntimeError, subprocess.TimeoutExpired):
            return []
        rows = [line.split("|") for line in out.splitlines() if line]
        return [NodeState(r[0], int(r[1]), r[2], r[3]) for r in rows]

    def primary(self) -> str:
        """The node the monitor has assigned the primary role (also mid-failover)."""
        for node in self.states():
            if node.goal in ("primary", "wait_primary", "single"):
                return node.name
        raise AssertionError(f"no primary assigned: {self.states()}")

    def stable(self) -> bool:
        states = self.states()
        settled = {n.reported for n in states if n.reported == n.goal}
        return len(states) == 2 and settled == {"primary", "secondary"}

    def wait_stable(self, timeout: float) -> None:
        """Until one primary and one secondary, both settled. A standby's base backup waits
        for a checkpoint on the primary, spread over minutes by default: ask for it now."""
        deadline = time.monotonic() + timeout
        nudged = 0.0
        while not self.stable():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the formation did not settle: {self.states()}")
            if time.monotonic() - nudged > 2:
                nudged = time.monotonic()
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, AssertionError):
                    self.sql(self.ports[self.primary()], "CHECKPOINT", timeout=5)
            time.sleep(0.25)

    def _until(self, condition: Callable[[], bool], deadline: float, what: str) -> None:
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.25)

    # faults -----------------------------------------------------------------------------
    def perform_failover(self) -> subprocess.Popen[bytes]:
        """``pg_autoctl perform failover``, not waited for: the caller measures meanwhile."""
        return self._service(
            "failover",
            ["perform", "failover", "--pgdata", str(self.pgdata("monitor")), "--wait", "60"],
        )

    def stop_node(self, name: str) -> None:
        """``pg_autoctl stop``: the keeper stops its PostgreSQL (fast shutdown) and exits."""
        self._autoctl(["stop", "--pgdata", str(self.pgdata(name))], timeout=30)
        proc = self.running.pop(name, None)
        if proc is not None:
            proc.wait(30)

    def start_node(self, name: str) -> None:
        self._service(name, ["run", "--pgdata", str(self.pgdata(name))])

    def postmaster(self, name: str) -> int | None:
        """The node's postmaster pid, if it is running with that node's data folder."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.pgdata(name) / "postmaster.pid").read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(self.pgdata(name)).encode() in cmdline:
                return pid
        return None

    def freeze(self, name: str) -> None:
        """SIGSTOP the node's postmaster, then each of its children: a hung, not dead, server."""
        pid = self.postmaster(name)
        assert pid is not None, f"{name} has no running postmaster"
        os.kill(pid, signal.SIGSTOP)
        self.frozen = [pid, *_children(pid)]
        for child in self.frozen[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in reversed(self.frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.frozen = []

    # tearing down -----------------------------------------------------------------------
    def close(self, keep_logs: Path | None = None) -> None:
        """Stop everything this formation started, whatever state it is in; remove the folder
        (its pg_autoctl and PostgreSQL logs copied to ``keep_logs`` first, if given)."""
        self.thaw()
        for name in (*self.names, "monitor"):
            if self.running.get(name) is not None and self.running[name].poll() is None:
                with contextlib.suppress(Exception):
                    self._autoctl(
                        ["stop", "--fast", "--pgdata", str(self.pgdata(name))], timeout=20
                    )
        for proc in self.services:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
        for name in (*self.names, "monitor"):
            pid = self.postmaster(name)  # a postmaster that outlived its keeper
            if pid is not None:
                for victim in (pid, *_children(pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
        if keep_logs is not None:
            for log in [*self.root.glob("*.log"), *self.root.glob("*/log/*.log")]:
                with contextlib.suppress(OSError):
                    shutil.copy(log, keep_logs / "_".join(log.relative_to(self.root).parts))
        shutil.rmtree(self.root, ignore_errors=True)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found
