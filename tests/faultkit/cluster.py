"""Several real ``sessionstream serve`` nodes on one PostgreSQL schema, each behind its own
:class:`~tests.faultkit.proxy.FaultProxy`, and the controls a fault test needs.

The nodes are :class:`~tests.serverproc.ServerProcess` subprocesses: a
SIGKILL, a SIGSTOP or a cut link hits a real process with its real pools and
background tasks. Each node reaches PostgreSQL only through its proxy, so a
network fault isolates one node while the test and the others keep their
direct path. Every incarnation of a node gets a new node id (``n1.2`` is
node 1 after its second restart), so leases and logs say which one wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.faultkit.proxy import FaultProxy, ProxyThread
from tests.pg import DSN, url_with_schema
from tests.serverproc import ServerProcess, base_env, create_user


def through(dsn: str, port: int) -> str:
    """``dsn`` with its host and port replaced by the local proxy's."""
    parts = urlsplit(dsn)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@dataclass
class Node:
    """One node: its process, its link to PostgreSQL and what the test did to it."""

    index: int
    server: ServerProcess
    proxy: FaultProxy
    generation: int = 0
    paused: bool = False

    @property
    def name(self) -> str:
        return f"n{self.index}"

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    @property
    def running(self) -> bool:
        proc = self.server.proc
        return proc is not None and proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        self.server.env["SESSIONSTREAM_NODE_ID"] = f"{self.name}.{self.generation}"
        self.server.start(timeout)

    def kill(self) -> None:
        self.server.kill()
        self.paused = False

    async def restart(self) -> None:
        """A new incarnation on the same port (off the event loop: startup waits)."""
        self.generation += 1
        await asyncio.to_thread(self.start)

    def pause(self) -> None:
        self.server.pause()
        self.paused = True

    def resume(self) -> None:
        self.server.resume()
        self.paused = False


@dataclass
class Cluster:
    """The nodes, the owner's API token, and the direct URL the checks read through."""

    nodes: list[Node]
    token: str
    database_url: str
    schema: str
    proxies: ProxyThread
    logs: list[Path] = field(default_factory=list)

    def others(self, victim: Node) -> list[Node]:
        return [n for n in self.nodes if n is not victim]

    def log_tail(self, lines: int = 40) -> str:
        """The end of every node's log, for an assertion message."""
        out = []
        for path in self.logs:
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)


@contextlib.contextmanager
def cluster(schema: str, tmp: Path, env: dict[str, str], *, size: int = 3) -> Iterator[Cluster]:
    """``size`` nodes on ``schema`` (which the caller drops), each behind a proxy; ``env``
    is given to every node (``SESSIONSTREAM_LEASE_TTL_S`` and the like)."""
    direct = url_with_schema(schema)
    token = create_user(["--database-url", direct])
    host = urlsplit(DSN).hostname or "127.0.0.1"
    pg_port = urlsplit(DSN).port or 5432
    with ProxyThread() as proxies:
        nodes: list[Node] = []
        try:
            for index in range(size):
                proxy = proxies.proxy(host, pg_port)
                log = tmp / f"node-{index}.log"
                server = ServerProcess(
                    ["--database-url", url_with_schema_via(schema, proxy.port)],
                    env=base_env(**env),
                    log_path=log,
                )
                node = Node(index, server, proxy)
                nodes.append(node)
                node.start()
            yield Cluster(
                nodes, token, direct, schema, proxies, [tmp / f"node-{i}.log" for i in range(size)]
            )
        finally:
            for node in nodes:
                node.server.stop()


def url_with_schema_via(schema: str, port: int) -> str:
    return through(url_with_schema(schema), port)
