"""The deployment files in ``deploy/`` do what the deployment guide says.

- ``deploy/sessionstream.env.example`` names only real settings, and a node
  started the way ``deploy/systemd/sessionstream.service`` starts it, with
  those settings (the example's secrets and database swapped for the test's),
  serves, leases runs under its node id and signs checkpoints.
- ``deploy/nginx/check-upstreams`` marks the nodes whose ``/healthz`` fails
  ``down`` in the nginx config, puts them back when they recover, reloads only
  on a change, and never marks every node down. nginx itself, with the same
  config, runs in ``tests/test_nginx.py``.
"""

from __future__ import annotations

import asyncio
import configparser
import shlex
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from sessionstream.core.settings import Settings, env_name
from sessionstream.eventstore.checkpoint import Signer
from tests.conftest import ON_CI
from tests.pg import throwaway_schema, url_with_schema
from tests.serverproc import SECRET, ServerProcess, base_env, call, create_user, free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHECK = DEPLOY / "nginx" / "check-upstreams"


def env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's ``EnvironmentFile=`` reads them (no quotes used)."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_the_env_example_names_only_real_settings() -> None:
    known = {env_name(name) for name in Settings.model_fields}
    example = env_file(DEPLOY / "sessionstream.env.example")
    assert set(example) <= known, set(example) - known
    # what every node of a cluster needs (docs/guides/deployment.md)
    for needed in ("DATABASE_URL", "SECRET", "LOG_KEY", "NODE_ID", "LEASE_TTL_S", "HOST"):
        assert f"SESSIONSTREAM_{needed}" in example


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    async for schema in throwaway_schema("test_deploy"):
        yield url_with_schema(schema)


@pytest.mark.postgres
async def test_a_node_started_as_the_unit_says_with_the_example_settings_serves(
    database_url: str, tmp_path: Path
) -> None:
    service = unit(DEPLOY / "systemd" / "sessionstream.service")["Service"]
    assert service["EnvironmentFile"] == "/etc/sessionstream/sessionstream.env"
    program, *args = shlex.split(service["ExecStart"])
    assert Path(program).name == "sessionstream" and args == ["serve"]
    settings = env_file(DEPLOY / "sessionstream.env.example")
    port = free_port()
    settings.update(
        SESSIONSTREAM_DATABASE_URL=database_url,
        SESSIONSTREAM_SECRET=SECRET,
        SESSIONSTREAM_LOG_KEY=Signer.generate("sessions.example.com").skey(),
        SESSIONSTREAM_HOST="127.0.0.1",
        SESSIONSTREAM_PORT=str(port),
    )
    env = base_env(**settings)
    token = create_user(["--database-url", database_url])
    node = ServerProcess([], port=port, env=env, log_path=tmp_path / "node.log")
    # ServerProcess runs `python -m sessionstream serve --port P`: the unit's command
    await asyncio.to_thread(node.start)
    try:
        status, health, _ = await asyncio.to_thread(call, node.base_url, None, "GET", "/healthz")
        assert status == 200 and health["status"] == "ok"
        status, body, _ = await asyncio.to_thread(
            call, node.base_url, token, "GET", "/api/log/checkpoint"
        )
        assert status == 200, body  # signed with the shared log key
        assert "sessions.example.com" in str(body)
    finally:
        await asyncio.to_thread(node.stop)


# -- check-upstreams -------------------------------------------------------------------------
class Node:
    """A stand-in for a node's /healthz: 200 or 503, as the test says."""

    def __init__(self) -> None:
        self.healthy = True
        self.port = 0

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({}, status=200 if self.healthy else 503)


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    made, runners = [Node(), Node()], []
    for node in made:
        app = web.Application()
        app.router.add_get("/healthz", node.healthz)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        node.port = runner.addresses[0][1]
        runners.append(runner)
    yield made
    for runner in runners:
        await runner.cleanup()


async def check(conf: Path, reloads: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(CHECK),
        str(conf),
        env={
            **base_env(),
            "SESSIONSTREAM_NGINX_RELOAD": f"echo reload >> {shlex.quote(str(reloads))}",
            "SESSIONSTREAM_HEALTH_TIMEOUT_S": "2",
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


def downs(conf: Path) -> list[str]:
    return [
        line.split()[1]
        for line in conf.read_text().splitlines()
        if line.strip().startswith("server ") and line.rstrip().endswith(" down;")
    ]


async def test_check_upstreams_takes_failing_nodes_out_and_puts_them_back(
    nodes: list[Node], tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        if ON_CI:
            pytest.fail("curl is missing (.ci/run installs it)")
        pytest.skip("curl is missing")
    a, b = nodes
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    template = (DEPLOY / "nginx" / "sessionstream.conf").read_text()
    conf = tmp_path / "sessionstream.conf"
    conf.write_text(
        template.replace("10.0.0.11:8080", f"127.0.0.1:{a.port}")
        .replace("10.0.0.12:8080", f"127.0.0.1:{b.port}")
        .replace("10.0.0.13:8080", dead)
    )
    reloads = tmp_path / "reloads"
    reloads.touch()

    b.healthy = False
    await check(conf, reloads)
    assert downs(conf) == [f"127.0.0.1:{b.port}", dead]
    assert reloads.read_text().count("reload") == 1

    await check(conf, reloads)  # nothing changed: no reload
    assert reloads.read_text().count("reload") == 1

    b.healthy = True
    await check(conf, reloads)
    assert downs(conf) == [dead]
    assert reloads.read_text().count("reload") == 2

    a.healthy = b.healthy = False  # every node failing: the nodes answer, not nginx
    await check(conf, reloads)
    assert downs(conf) == []
    # the rest of the file is the template's, line for line
    kept = [x for x in conf.read_text().splitlines() if not x.strip().startswith("server ")]
    assert kept == [x for x in template.splitlines() if not x.strip().startswith("server ")]


@pytest.mark.skipif(sys.platform != "linux", reason="systemd units are Linux's")
def test_the_units_parse() -> None:
    for name in ("sessionstream.service", "sessionstream-upstreams.service"):
        parsed = unit(DEPLOY / "systemd" / name)
        assert parsed["Service"]["ExecStart"]
    timer = unit(DEPLOY / "systemd" / "sessionstream-upstreams.timer")
    assert timer["Timer"]["OnUnitActiveSec"] == "5s"
    upstreams = unit(DEPLOY / "systemd" / "sessionstream-upstreams.service")
    assert "check-upstreams" in upstreams["Service"]["ExecStart"]
