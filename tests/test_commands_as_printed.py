"""Every command the project prints runs as printed, after the README's quick start.

The commands come from the ``sh`` blocks of ``README.md`` and ``docs/**/*.md``, the
console's hints (``server/static``) and the CLI's own hints; each block runs as one
bash script (``set -euo pipefail``) in a fresh directory whose ``.venv`` is this
checkout's, against a server started the way ``make serve`` starts it, on a free
port and a fresh database. Only the host's port and the token are substituted.
A command that cannot run in a test is in :data:`SKIP`, with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ON_CI

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent

#: (file, a line the block starts with) -> why the test does not run it
SKIP: dict[tuple[str, str], str] = {
    # the quick start itself: the fixture below runs its two steps (users create demo,
    # serve) instead of `make serve`, which installs and then serves until stopped
    ("README.md", "make serve"): "installs into .venv and serves forever; done by the fixture",
    ("docs/tutorial.md", "make serve"): "the README's quick start again",
    ("docs/explanation/proof.md", ".venv/bin/python -m pytest"): "the test suite itself",
    ("docs/explanation/scale.md", ".venv/bin/python -m bench"): "benchmarks of minutes to hours",
    ("docs/explanation/fanout.md", ".venv/bin/python -m bench"): "benchmarks of minutes",
    ("docs/guides/postgres.md", "pip install"): "a multi-node PostgreSQL deployment",
    # the deployment guide's steps run as root on the database, node and nginx machines;
    # tests/test_deploy.py runs its files (a node on the example settings, check-upstreams)
    ("docs/guides/deployment.md", "sudo -u postgres psql"): "creates a role on the database host",
    ("docs/guides/deployment.md", "sudo useradd"): "installs a node on a machine of its own",
    ("docs/guides/deployment.md", "sudo apt-get install -y nginx"): "configures the host's nginx",
    ("docs/guides/deployment.md", "sudo install -m 0755"): "installs a timer on the nginx host",
    ("docs/guides/deployment.md", ".venv/bin/sessionstream verify"): "needs the cluster's database",
    ("docs/guides/failover.md", "pg_autoctl show uri"): "needs a pg_auto_failover formation",
    ("docs/guides/failover.md", "sudo apt-get install"): "installs pg_auto_failover",
    ("docs/guides/real-model.md", ".venv/bin/pip install"): "installs from the network",
    ("docs/guides/real-model.md", "export SESSIONSTREAM_ENGINE"): "needs a model provider",
    ("docs/guides/real-model.md", "vllm serve"): "a GPU model server",
    ("docs/guides/real-model.md", "ollama pull"): "downloads a model",
    # it subscribes to a run the reader started (RUN_ID, RUN_TOKEN) and streams until
    # the run ends; tests/test_realtime.py covers the SSE channel
    ("docs/guides/realtime.md", "curl -N"): "needs a run in flight",
    ("docs/guides/console.md", ".venv/bin/sessionstream serve &"): "a second server on :8080",
    # revoking the token the walk-through runs on would fail every block after it;
    # tests/test_edges_auth.py revokes tokens and watches their channels close
    ("docs/guides/operations.md", 'echo "$OLD_TOKEN"'): "needs a token the reader retires",
}


@dataclass(frozen=True)
class Block:
    source: str
    text: str

    @property
    def first(self) -> str:
        return self.text.strip().splitlines()[0]


def doc_blocks() -> list[Block]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = []
    for path in files:
        for match in re.finditer(
            r"```(?:sh|bash)\n(.*?)```", path.read_text(encoding="utf-8"), re.S
        ):
            found.append(Block(str(path.relative_to(ROOT)), match.group(1)))
    return found


def hinted_commands() -> list[Block]:
    """The commands the console and the CLI tell a user to run."""
    pattern = re.compile(r"\.venv/bin/sessionstream [a-z][a-z -]*[A-Za-z]")
    found = []
    for path in sorted(
        [*(ROOT / "server" / "static").iterdir(), *(ROOT / "sessionstream" / "cli").glob("*.py")]
    ):
        for command in sorted(set(pattern.findall(path.read_text(encoding="utf-8")))):
            # a placeholder a person fills in (NAME) gets a value
            found.append(Block(str(path.relative_to(ROOT)), command.replace("NAME", "newcomer")))
    return found


def skip_reason(block: Block) -> str | None:
    for (source, start), reason in SKIP.items():
        if block.source == source and block.first.startswith(start):
            return reason
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class QuickStart:
    home: Path
    port: int
    token: str
    env: dict[str, str]

    def run(self, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        script = script.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}")
        script = script.replace("export T=sst_...", f"export T={self.token}")
        return subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + script],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuickStart]:
    """A fresh directory after the README's quick start: ``.venv``, user "demo", a server."""
    for tool in ("curl", "jq"):
        if shutil.which(tool) is None:
            if ON_CI:
                pytest.fail(f"{tool} is missing (.ci/run installs it)")
            pytest.skip(f"{tool} is missing")
    home = tmp_path_factory.mktemp("newcomer")
    (home / ".venv").symlink_to(VENV)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "SESSIONSTREAM_OFFLINE_PACE_MS": "0",
    }
    port = _free_port()
    created = subprocess.run(
        [".venv/bin/sessionstream", "users", "create", "demo"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = created.stdout.strip().splitlines()[-1]
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [".venv/bin/sessionstream", "serve", "--port", str(port)],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    home / "server.log"
                ).read_text()
                time.sleep(0.1)
        yield QuickStart(home, port, token, env)
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()


BLOCKS = doc_blocks()
HINTS = hinted_commands()


def _id(block: Block) -> str:
    return f"{block.source}:{block.first[:40]}"


@pytest.mark.parametrize("block", BLOCKS + HINTS, ids=_id)
def test_runs_as_printed(block: Block, quick_start: QuickStart) -> None:
    reason = skip_reason(block)
    if reason is not None:
        pytest.skip(reason)
    done = quick_start.run(block.text)
    assert done.returncode == 0, f"{block.source}:\n{block.text}\n{done.stdout}\n{done.stderr}"


def test_the_walk_through_gives_what_the_readme_says(quick_start: QuickStart) -> None:
    (walk,) = [b for b in BLOCKS if b.source == "README.md" and "wait_idle" in b.text]
    done = quick_start.run(walk.text)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert '"runId"' in out and "Northwind" in out and '"Intro to VPs"' in out
    assert '{"success": true}' in out and '"not_found"' in out


def test_a_server_that_is_down_is_an_error_not_a_silent_hang(quick_start: QuickStart) -> None:
    """``curl -fsS``: the walk-through's first call fails loudly with no server."""
    (walk,) = [b for b in BLOCKS if b.source == "README.md" and "wait_idle" in b.text]
    script = walk.text.replace("127.0.0.1:8080", f"127.0.0.1:{_free_port()}")
    done = quick_start.run(script, timeout=30)
    assert done.returncode != 0 and "curl: (7)" in done.stderr


def test_every_skip_names_a_block_that_exists() -> None:
    for source, start in SKIP:
        assert any(b.source == source and b.first.startswith(start) for b in BLOCKS), (
            source,
            start,
        )


def test_the_import_hint_runs_as_printed(quick_start: QuickStart) -> None:
    """The CLI's own hint: after an import it prints the verify command to run."""
    done = quick_start.run(
        ".venv/bin/sessionstream export --db sessionstream.db --out log.ndjson\n"
        ".venv/bin/sessionstream import log.ndjson --db copy.db"
    )
    assert done.returncode == 0, done.stderr
    hint = done.stdout.splitlines()[-1].removeprefix("check it with: ")
    assert hint.startswith(".venv/bin/sessionstream verify --db copy.db"), hint
    assert quick_start.run(hint).returncode == 0
