"""The HTTP targets of ARCHITECTURE.md, and the baselines they are measured against.

Two baselines, each a bare aiohttp app in its own process (on uvloop, as
``sessionstream serve`` is), so the service and its baseline face the same
load client in the same minute:

- ``read``: ``GET /rows/{id}`` does one aiosqlite primary-key ``SELECT`` of a
  JSON body about the size of a session row and returns it, written the way
  aiosqlite's documentation writes a query (``async with db.execute(...) as
  cursor: await cursor.fetchone()``), the handler ARCHITECTURE.md measured.
  Target: ``GET`` of a session serves at least 1.5x its requests/s.
  ``GET /rows-one-hop/{id}`` is the leanest possible variant
  (``execute_fetchall``: one thread hop), and ``GET /constant/{id}`` returns
  the same body with no database at all (the ceiling of any aiohttp handler
  on the machine); both are reported beside it for context.
- ``write``: ``PATCH /rows/{id}`` parses the JSON body and commits one
  ``INSERT`` per request (aiosqlite, WAL, ``synchronous=FULL``; a lock keeps it
  one transaction per request, as a naive durable handler is). Target: 64
  clients PATCHing sessions commit at least 1.5x its events/s.

``hammer`` is the closed-loop load client both are measured with.

    python -m bench.http serve read|write --port P --db PATH   (used by bench.load)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROW_BODY = json.dumps(
    {
        "row": {
            "id": "00000000-0000-4000-8000-000000000000",
            "title": "Intro email",
            "messages": [{"role": "user", "content": "x" * 200}],
            "draft_subject": "Hi %first_name%",
            "draft_body": "y" * 300,
            "task_status": None,
        }
    }
)
BASELINE_ROWS = 1000


# baseline servers -----------------------------------------------------------------
def read_app(db: str) -> web.Application:
    import aiosqlite

    conn_key = web.AppKey("conn", aiosqlite.Connection)
    app = web.Application()

    async def open_db(app: web.Application) -> Any:
        conn = await aiosqlite.connect(db)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, body TEXT)")
        await conn.executemany(
            "INSERT OR REPLACE INTO rows VALUES (?, ?)",
            [(str(i), ROW_BODY) for i in range(BASELINE_ROWS)],
        )
        await conn.commit()
        app[conn_key] = conn
        yield
        await conn.close()

    async def get_row(request: web.Request) -> web.Response:
        # aiosqlite as its documentation writes a query: a cursor, then fetchone
        conn = request.app[conn_key]
        async with conn.execute(
            "SELECT body FROM rows WHERE id = ?", (request.match_info["id"],)
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise web.HTTPNotFound()
        return web.Response(text=row[0], content_type="application/json")

    async def get_row_one_hop(request: web.Request) -> web.Response:
        # the leanest aiosqlite read: execute and fetch in one thread hop
        rows = list(
            await request.app[conn_key].execute_fetchall(
                "SELECT body FROM rows WHERE id = ?", (request.match_info["id"],)
            )
        )
        if not rows:
            raise web.HTTPNotFound()
        return web.Response(text=rows[0][0], content_type="application/json")

    async def get_constant(request: web.Request) -> web.Response:
        # no database at all: the ceiling any aiohttp handler can reach here
        return web.Response(text=ROW_BODY, content_type="application/json")

    app.cleanup_ctx.append(open_db)
    app.router.add_get("/constant/{id}", get_constant)
    app.router.add_get("/rows/{id}", get_row)
    app.router.add_get("/rows-one-hop/{id}", get_row_one_hop)
    app.router.add_get("/healthz", lambda _r: _ok())
    return app


def write_app(db: str) -> web.Application:
    import aiosqlite

    conn_key = web.AppKey("conn", aiosqlite.Connection)
    lock = asyncio.Lock()
    app = web.Application()

    async def open_db(app: web.Application) -> Any:
        conn = await aiosqlite.connect(db)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS events (position INTEGER PRIMARY KEY AUTOINCREMENT, "
            "stream_id TEXT NOT NULL, data TEXT NOT NULL)"
        )
        await conn.commit()
        app[conn_key] = conn
        yield
        await conn.close()

    async def patch_row(request: web.Request) -> web.Response:
        body = await request.json()
        conn = request.app[conn_key]
        async with lock:  # one insert, one commit, per request
            await conn.execute(
                "INSERT INTO events (stream_id, data) VALUES (?, ?)",
                (request.match_info["id"], json.dumps(body)),
            )
            await conn.commit()
        return web.json_response({"ok": True})

    app.cleanup_ctx.append(open_db)
    app.router.add_patch("/rows/{id}", patch_row)
    app.router.add_get("/healthz", lambda _r: _ok())
    return app


async def _ok() -> web.Response:
    return web.json_response({"status": "ok"})


# processes --------------------------------------------------------------------------
@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    args: Sequence[str], env: dict[str, str] | None = None, log: Path | None = None
) -> Server:
    """Run ``python -m <args> --port P`` and wait until ``/healthz`` answers."""
    port = free_port()
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", *args, "--port", str(port)],
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=out,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(args)} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return Server(proc, base)
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"{' '.join(args)} did not become healthy")


def start_baseline(kind: str, db: Path) -> Server:
    return start(["bench.http", "serve", kind, "--db", str(db)])


# the load client ----------------------------------------------------------------------
@dataclass
class Tally:
    """Latencies and outcomes of one measured series."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    expected: int = 0  # refusals the protocol defines (409 busy), not errors
    error_samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)

    def summary(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "count": len(ordered),
            "errors": self.errors,
            "expected_refusals": self.expected,
            "per_s": len(ordered) / seconds if seconds else 0.0,
            "p50_ms": percentile(ordered, 0.50) * 1000,
            "p95_ms": percentile(ordered, 0.95) * 1000,
            "p99_ms": percentile(ordered, 0.99) * 1000,
            "error_samples": self.error_samples,
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


Request = Callable[[aiohttp.ClientSession, int, int], Awaitable[int]]


async def hammer(
    request: Request, *, clients: int, seconds: float, warmup: float = 0.5
) -> tuple[float, Tally]:
    """``clients`` loops each sending ``request(http, client, n)`` back to back.

    Returns (successful requests per second, tally) over ``seconds`` after a warm-up.
    """
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as http:
        measuring = False
        stop_at = time.perf_counter() + warmup + seconds

        async def loop(client: int) -> None:
            n = 0
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    status = await request(http, client, n)
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    tally.error(repr(exc))
                    continue
                finally:
                    n += 1
                if not measuring:
                    continue
                if 200 <= status < 300:
                    tally.latencies.append(time.perf_counter() - started)
                else:
                    tally.error(f"HTTP {status}")

        tasks = [asyncio.create_task(loop(c)) for c in range(clients)]
        await asyncio.sleep(warmup)
        measuring = True
        began = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    return len(tally.latencies) / elapsed, tally


# wrk: a load client that is not itself the bottleneck ---------------------------------
WRK = shutil.which("wrk")
WRK_SCRIPT = """
local reqs = {}
local i = 0
init = function(args)
  -- formatted here, not at load: wrk sets the Host header just before init
  reqs = {%s}
end
request = function()
  i = i + 1
  return reqs[(i %% #reqs) + 1]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK-RESULT %%d %%d %%d %%d %%.1f %%.1f\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class Call:
    """One request of a wrk rotation."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


def _lua(text: str) -> str:
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal here


def wrk_script(calls: Sequence[Call]) -> str:
    formats = []
    for c in calls:
        headers = "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in c.headers.items()) + "}"
        body = _lua(c.body) if c.body is not None else "nil"
        formats.append(f"wrk.format({_lua(c.method)}, {_lua(c.path)}, {headers}, {body})")
    return WRK_SCRIPT % ", ".join(formats)


async def wrk(
    base_url: str, calls: Sequence[Call], *, clients: int, seconds: float, warmup: float = 1.0
) -> tuple[float, dict[str, Any]]:
    """Closed-loop load from ``wrk`` (C, one thread, ``clients`` connections).

    Python's own client tops out near what one aiohttp server core serves, so on
    a 2-core machine it measures itself; wrk leaves the server as the bottleneck.
    Returns (successful requests/s, summary) after an unmeasured warm-up.
    """
    if WRK is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(calls))
        script = f.name
    try:
        summary: dict[str, Any] = {}
        for duration in (warmup, seconds):
            proc = await asyncio.create_subprocess_exec(
                WRK,
                "-t1",
                f"-c{clients}",
                f"-d{max(1, round(duration))}s",
                "--latency",
                "-s",
                script,
                base_url,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out = (await proc.communicate())[0].decode(errors="replace")
            line = next((x for x in out.splitlines() if x.startswith("WRK-RESULT")), None)
            if proc.returncode or line is None:
                raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-500:]}")
            requests, micros, errors, non_2xx, p50, p99 = (float(v) for v in line.split()[1:])
            summary = {
                "requests": int(requests),
                "errors": int(errors + non_2xx),
                "per_s": (requests - non_2xx) / (micros / 1e6),
                "p50_ms": p50 / 1000,
                "p99_ms": p99 / 1000,
            }
    finally:
        os.unlink(script)
    return summary["per_s"], summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a baseline server")
    serve.add_argument("kind", choices=["read", "write"])
    serve.add_argument("--db", required=True)
    serve.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional
        pass
    app = read_app(args.db) if args.kind == "read" else write_app(args.db)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
