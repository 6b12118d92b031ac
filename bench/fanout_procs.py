"""The processes around ``bench/fanout_pg.py``'s nodes: the model and the subscribers.

The model is an OpenAI-compatible endpoint whose tokens are the monotonic
time they were emitted at; a subscriber process holds many websockets and
turns each token it receives into a latency. Each runs in its own process
so neither competes with the bench's coordinator for its event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import install_uvloop

TERMINAL = ("run.completed", "run.failed", "run.canceled")
#: a channel closed early is opened again at most this often before it counts as lost
MAX_RECONNECTS = 20


# -- the model --------------------------------------------------------------------------
def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def model_process(port: int, pipe: Connection) -> None:
    """Streams timestamps once ``POST /go`` says so: as many, as often, as the last
    ``POST /reset`` said (``{"tokens": n, "pace_s": s}``)."""
    go = asyncio.Event()
    plan = {"tokens": 0.0, "pace_s": 0.0}

    async def completions(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk({"role": "assistant", "content": ""}))
        await go.wait()
        start = time.monotonic()
        tokens, pace_s = int(plan["tokens"]), plan["pace_s"]
        for n in range(tokens):
            # a fixed schedule: a late wake-up does not push every later token back
            await asyncio.sleep(max(0.0, start + n * pace_s - time.monotonic()))
            await resp.write(_chunk({"content": f"{time.monotonic():.6f} "}))
        await resp.write(_chunk({}, "stop") + b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def start_tokens(_request: web.Request) -> web.Response:
        go.set()
        return web.json_response({})

    async def reset(request: web.Request) -> web.Response:
        plan.update(await request.json())
        go.clear()
        return web.json_response({})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        app.router.add_post("/go", start_tokens)
        app.router.add_post("/reset", reset)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        pipe.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until told to stop
        await runner.cleanup()

    install_uvloop()
    asyncio.run(main())


# -- the subscribers ----------------------------------------------------------------------
@dataclass(frozen=True)
class Watch:
    url: str
    local: bool


def subscriber_process(watches: list[Watch], pipe: Connection) -> None:
    """Opens every websocket, says ready, then records each delta's latency until
    every run has ended; sends back (local ms, remote ms, frames lost or repeated,
    CPU seconds it used meanwhile, delta frames, ms from each token's emission to
    the writer's timestamp of its delta, ms from that timestamp to each frame's
    arrival, channels closed early by close code)."""

    async def one(
        http: aiohttp.ClientSession, watch: Watch, opened: asyncio.Event, out: list[float]
    ) -> int:
        """Frames out of order, missing or repeated on one run channel. A channel the
        node closes before the run's end (4408: too slow to read) is opened again
        from the last ``seq`` received, as ``sessionstream.client`` does."""
        last_seq, wrong = 0, 0
        for _ in range(MAX_RECONNECTS):
            url = f"{watch.url}&after={last_seq}" if last_seq else watch.url
            async with http.ws_connect(url, heartbeat=None, max_msg_size=0) as ws:
                opened.set()
                async for message in ws:
                    now = time.monotonic()
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    frame = json.loads(message.data)
                    seq = frame.get("seq")
                    if seq is None or "position" not in frame:
                        continue  # a heartbeat, not an event
                    wrong += int(seq != last_seq + 1)
                    last_seq = seq
                    if frame["type"] == "message.delta":
                        # a delta carries every token its coalescing window gathered
                        stamps = [float(t) for t in frame["data"]["text"].split()]
                        out.extend((now - t) * 1000 for t in stamps)
                        # the writer's timestamp splits it: before (engine, the writer's
                        # queue) and after (commit, NOTIFY, the read, the fan-out, us)
                        written = _wall(frame["at"]) - offset
                        split[0].extend((written - t) * 1000 for t in stamps)
                        split[1].append((now - written) * 1000)
                        frames[0] += 1
                    elif frame["type"] in TERMINAL:
                        return wrong
            closes[str(ws.close_code)] = closes.get(str(ws.close_code), 0) + 1
        return wrong + 1  # never reached the run's end

    frames = [0]
    #: channels the node closed before their run's end, by close code
    closes: dict[str, int] = {}
    split: tuple[list[float], list[float]] = ([], [])
    # the wall clock in the monotonic one's terms (both are this host's)
    offset = time.time() - time.monotonic()

    async def main() -> tuple[
        list[float], list[float], int, float, int, list[float], list[float], dict[str, int]
    ]:
        local: list[float] = []
        remote: list[float] = []
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            opened = [asyncio.Event() for _ in watches]
            tasks = [
                asyncio.create_task(one(http, w, o, local if w.local else remote))
                for w, o in zip(watches, opened, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 120)
            pipe.send("ready")
            cpu = _cpu_self()
            wrong = sum(await asyncio.wait_for(asyncio.gather(*tasks), 600))
        return local, remote, wrong, _cpu_self() - cpu, frames[0], *split, closes

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    install_uvloop()
    pipe.send(asyncio.run(main()))


def _wall(at: str) -> float:
    """An event's ``recorded_at`` (RFC 3339, UTC, milliseconds) as a POSIX time."""
    return datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) another process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
