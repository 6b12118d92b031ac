"""nginx in front of a cluster, configured by the file the deployment guide ships.

``deploy/nginx/sessionstream.conf`` is an http-level include with example
node addresses and ``listen 80``. :func:`render` swaps in the test's nodes
and port and changes nothing else, so what is tested is what is deployed.
:class:`Nginx` runs Debian's ``nginx`` binary as its own master process with
a prefix, pid file, logs and temp paths in a temporary directory: the
system's nginx service is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.serverproc import free_port

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "sessionstream.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
UPSTREAM_SERVER = re.compile(r"^(\s*)server\s+\S+:\d+(?P<params>[^;]*);\s*$", re.MULTILINE)


def render(template: str, node_ports: Sequence[int], port: int) -> str:
    """The shipped file with the test's upstream servers and listening port."""
    lines = UPSTREAM_SERVER.findall(template)
    assert lines, "the template has no upstream server lines"
    indent, params = lines[0]
    servers = "".join(f"{indent}server 127.0.0.1:{p}{params};\n" for p in node_ports)
    first = True

    def replace(match: re.Match[str]) -> str:
        nonlocal first
        out, first = (servers if first else ""), False
        return out

    text = UPSTREAM_SERVER.sub(replace, template)
    text, listens = re.subn(r"^(\s*)listen\s+80;", rf"\1listen 127.0.0.1:{port};", text, flags=re.M)
    assert listens == 1, "the template does not listen on port 80 exactly once"
    return text


def main_config(tmp: Path, include: Path) -> str:
    """A whole nginx.conf around the include, everything it writes kept under ``tmp``."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the temp dir
    temps = "".join(
        f"    {name}_temp_path {tmp / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\npid {tmp / 'nginx.pid'};\n"
        f"error_log {tmp / 'error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n    access_log {tmp / 'access.log'};\n{temps}"
        f"    include {include};\n}}\n"
    )


class Nginx:
    """An nginx master process in front of ``node_ports`` until :meth:`stop`."""

    def __init__(self, tmp: Path, node_ports: Sequence[int]) -> None:
        if not Path(NGINX).exists():
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail("nginx is not installed (CI=true: the nginx tests must run)")
            pytest.skip("nginx is not installed")
        self.dir = tmp / "nginx"
        self.dir.mkdir()
        self.port = free_port()
        include = self.dir / "sessionstream.conf"
        include.write_text(render(TEMPLATE.read_text(), node_ports, self.port))
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(main_config(self.dir, include))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Nginx:
        cmd = [NGINX, "-p", str(self.dir), "-c", str(self.conf), "-g", "daemon off;"]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"nginx -t refused the rendered config:\n{check.stderr}"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nginx exited: {self.proc.stderr and self.proc.stderr.read()!r}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("nginx did not listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast: open websockets are not waited for
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""
