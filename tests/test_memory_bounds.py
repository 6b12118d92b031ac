"""Memory follows the request, not the stored data (issue 15, item 2), on a real server.

The adversarial probe's payloads: eight PATCHes of about 3 MB whose body is
a list of ``{}`` (a million tiny objects once parsed). Stored, they are read
back the two ways that blew memory up: one ``GET .../events?limit=9`` (635 MB
before) and 20 session channels opened from position 0 at once, each read to
its end (one alone took 557 MB). The server is a subprocess on a temporary
SQLite file, so its resident set is measured on its own (``/proc``), with the
kernel's peak counter reset before the reads where Linux allows it, and
``/healthz`` is polled the whole time from a thread.

The PATCH bounds would refuse these payloads (that is their job); the test
raises the list bound by setting, because the point here is reading back
what is stored. The figures are printed for the closing note (``-s``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp

from tests.serverproc import ServerProcess, base_env, call, create_user

S = "/api/campaigns/ai-chat-sessions"
#: ``[{}, {}, ...]`` as ``json.dumps`` spells it: 4 bytes an item, ~3 MB a body
ITEMS = 750_000
PATCHES = 8
CHANNELS = 20
MAX_GROWTH_MB = 150.0
MAX_HEALTHZ_S = 1.0


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Watch:
    """Samples the server's RSS and times ``/healthz`` on threads until stopped."""

    def __init__(self, pid: int, base_url: str) -> None:
        self.pid = pid
        self.base_url = base_url
        self.peak_kb = 0
        self.healthz_max_s = 0.0
        self.healthz_failures = 0
        self.polls = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._sample, daemon=True),
            threading.Thread(target=self._poll, daemon=True),
        ]

    def __enter__(self) -> Watch:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))
            self._stop.wait(0.01)

    def _poll(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.base_url + "/healthz", timeout=10) as resp:
                    resp.read()
                    ok = resp.status == 200
            except OSError:
                ok = False
            self.healthz_max_s = max(self.healthz_max_s, time.perf_counter() - started)
            self.healthz_failures += 0 if ok else 1
            self.polls += 1
            self._stop.wait(0.05)


async def read_channel(session: aiohttp.ClientSession, url: str, expect: int) -> list[int]:
    """The positions of the first ``expect`` frames of one channel (data never parsed)."""
    positions: list[int] = []
    async with session.ws_connect(url, max_msg_size=0) as ws:
        while len(positions) < expect:
            message = await ws.receive(timeout=120)
            assert message.type == aiohttp.WSMsgType.TEXT, message
            text: str = message.data
            assert text.startswith('{"type":'), text[:100]
            if ',"data":' not in text:  # a control frame (a heartbeat), not an event
                assert len(text) < 1000 and "position" not in json.loads(text), text[:300]
                continue
            head = text[: text.index(',"data":')] + "}"
            positions.append(int(json.loads(head)["position"]))
    return positions


async def open_channels(ws_url: str, count: int, expect: int) -> list[list[int]]:
    async with aiohttp.ClientSession() as session:
        return list(
            await asyncio.gather(*(read_channel(session, ws_url, expect) for _ in range(count)))
        )


def test_reading_back_large_payloads_is_bounded_by_the_request(tmp_path: Path) -> None:
    store = ["--db", str(tmp_path / "probe.db")]
    token = create_user(store)
    env = base_env(SESSIONSTREAM_PATCH_MAX_ITEMS=str(ITEMS))
    with ServerProcess(store, env=env, log_path=tmp_path / "server.log") as server:
        assert server.proc is not None
        pid, base = server.proc.pid, server.base_url
        _, campaign, _ = call(base, token, "POST", "/api/campaigns", {"name": "probe"})
        cid = campaign["campaign"]["id"]
        _, node, _ = call(base, token, "POST", f"/api/campaigns/{cid}/nodes", {"name": "n"})
        body = {"campaign_id": cid, "node_id": node["node"]["id"]}
        status, created, _ = call(base, token, "POST", S, body)
        assert status == 201, created
        sid = created["session"]["id"]
        payload = json.dumps({"skeleton_history": [{}] * ITEMS}).encode()
        assert 2_900_000 < len(payload) < 3_100_000
        for _ in range(PATCHES):
            status, answer, _ = call(base, token, "PATCH", f"{S}/{sid}", raw=payload, timeout=120)
            assert status == 200, str(answer)[:300]
        del payload

        before_kb = status_kb(pid, "VmRSS")
        exact_peak = reset_peak(pid)
        with Watch(pid, base) as watch:
            status, page, _ = call(base, token, "GET", f"{S}/{sid}/events?limit=9", timeout=60)
            assert status == 200, str(page)[:300]
            first_page = len(page["events"]), page["next"]
            positions: list[int] = []
            after = 0
            while True:  # every page, to know what a channel from 0 must send
                status, page, _ = call(
                    base, token, "GET", f"{S}/{sid}/events?after={after}&limit=9", timeout=60
                )
                assert status == 200, str(page)[:300]
                positions += [int(e["position"]) for e in page["events"]]
                if page["next"] is None:
                    break
                after = page["next"]
            assert len(positions) == 1 + PATCHES
            url = f"{server.ws_url}/api/realtime/sessions/{sid}?token={token}"
            got = asyncio.run(open_channels(url, CHANNELS, len(positions)))
        after_kb = status_kb(pid, "VmRSS")
        peak_kb = max(watch.peak_kb, status_kb(pid, "VmHWM") if exact_peak else 0)

    growth_mb = (peak_kb - before_kb) / 1024
    print(
        f"\nmemory bounds: RSS before {before_kb / 1024:.0f} MB, after {after_kb / 1024:.0f} MB, "
        f"peak {peak_kb / 1024:.0f} MB (growth {growth_mb:.0f} MB, "
        f"{'kernel VmHWM' if exact_peak else 'sampled'}); healthz max "
        f"{watch.healthz_max_s * 1000:.0f} ms over {watch.polls} polls"
    )
    assert first_page[0] >= 1 and first_page[1] is not None  # the byte budget cut it short
    assert got == [positions] * CHANNELS  # every channel got every event, in order
    assert watch.healthz_failures == 0 and watch.polls > 0
    assert watch.healthz_max_s < MAX_HEALTHZ_S, f"healthz took {watch.healthz_max_s:.2f} s"
    assert growth_mb <= MAX_GROWTH_MB, f"RSS grew {growth_mb:.0f} MB reading back"
