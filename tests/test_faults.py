"""Faults and hostile input: storage that refuses writes, locks, hung model providers,
and bodies built to hurt. Each must give a clear 4xx/503, write nothing partial, and
leave the service working once the fault is gone.

Storage faults are the real SQLite errors, raised by the real engine on the store's
own writer connection: ``PRAGMA query_only`` makes every write fail with
SQLITE_READONLY ("attempt to write a readonly database", what a read-only file or
mount gives; chmod cannot be used because CI runs as root), ``PRAGMA
max_page_count`` makes a growing write fail with SQLITE_FULL ("database or disk is
full"), and a second connection holding ``BEGIN IMMEDIATE`` is another process
holding the write lock.
"""

from __future__ import annotations

import asyncio
import errno
import random
import sqlite3
import string
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sessionstream.engines.base import ExampleInput, ExampleResult
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.server.keys import STORE
from tests.conftest import Api
from tests.scripted_engine import ScriptedEngine
from tests.torture.live import live_server
from tests.torture.report import report

S = "/api/campaigns/ai-chat-sessions"
SKELETON = {"subject": "Hi %first_name%", "body": "About %company%"}


def sqlite_store(api: Api) -> SQLiteEventStore:
    store = api.app[STORE]
    assert isinstance(store, SQLiteEventStore)
    return store


async def on_writer(api: Api, sql: str) -> Any:
    """Run one statement on the store's own writer connection, in its thread."""
    store = sqlite_store(api)

    def run() -> Any:
        assert store._wconn is not None
        return store._wconn.execute(sql).fetchall()

    return await store._in_writer(run)


async def snapshot(api: Api, sid: str) -> tuple[int, Any]:
    """What must not change: the log head and the session row."""
    store = api.app[STORE]
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    assert r.status == 200
    return await store.head_position(), (await r.json())["session"]


def assert_storage_error(status: int, body: Any, words: str) -> None:
    assert status == 503, body
    error = body["error"]
    assert error["code"] == "storage_unavailable", error
    assert words in error["message"] and "nothing was written" in error["message"], error


async def writes(api: Api, sid: str, campaign: str) -> list[tuple[str, str, Any]]:
    return [
        ("PATCH", f"{S}/{sid}", {"title": "during the fault", "skeleton": SKELETON}),
        ("POST", f"{S}/{sid}/turn", {"message": "write me an intro email"}),
        ("POST", "/api/campaigns", {"name": "new"}),
        ("POST", f"/api/campaigns/{campaign}/nodes", {"name": "n2"}),
        ("DELETE", f"{S}/{sid}", None),
    ]


Switch = Callable[[], Awaitable[Any]]


async def refused_everywhere(api: Api, words: str, arm: Switch, disarm: Switch) -> int:
    """Every kind of write is refused with 503 and leaves the log and the row as they were."""
    session = await api.session()
    sid, campaign = session["id"], session["campaign_id"]
    before = await snapshot(api, sid)
    await arm()
    tried = 0
    for method, url, body in await writes(api, sid, campaign):
        r = await api.client.request(method, url, json=body, headers=api.h())
        assert_storage_error(r.status, await r.json(), words)
        tried += 1
    # reads keep working while writes are refused
    assert (await api.client.get(f"{S}/{sid}", headers=api.h())).status == 200
    await disarm()
    assert await snapshot(api, sid) == before
    # the fault is gone: the same writes succeed, and the session was never left busy
    r = await api.client.patch(f"{S}/{sid}", json={"title": "after"}, headers=api.h())
    assert r.status == 200 and (await r.json())["session"]["task_status"] is None
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "hi"}, headers=api.h())
    assert r.status == 200, await r.text()
    return tried


async def test_read_only_database_gives_503_and_writes_nothing(make_api: Any) -> None:
    api: Api = await make_api()

    async def arm() -> None:
        await on_writer(api, "PRAGMA query_only=1")

    async def disarm() -> None:
        await on_writer(api, "PRAGMA query_only=0")

    assert await refused_everywhere(api, "read-only", arm, disarm) == 5


class FailingCommit:
    """The writer connection, except that COMMIT fails as the OS made it fail.

    Every statement of the batch has run when COMMIT fails: the point is that
    none of it survives (the store must roll back) and the callers hear 503.
    """

    def __init__(self, conn: sqlite3.Connection, message: str) -> None:
        self._conn = conn
        self._message = message

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.strip().upper() == "COMMIT":
            raise sqlite3.OperationalError(self._message)
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


async def test_full_disk_at_commit_gives_503_and_keeps_nothing(make_api: Any) -> None:
    api: Api = await make_api()
    store = sqlite_store(api)
    real = store._wconn
    assert real is not None

    async def arm() -> None:
        store._wconn = FailingCommit(real, "database or disk is full")  # type: ignore[assignment]

    async def disarm() -> None:
        store._wconn = real

    assert await refused_everywhere(api, "disk is full", arm, disarm) == 5
    # the rolled-back statements are not in the file either (not only the caches)
    conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    try:
        positions = [row[0] for row in conn.execute("SELECT position FROM events ORDER BY 1")]
    finally:
        conn.close()
    assert positions == list(range(1, len(positions) + 1))


async def test_full_disk_on_a_large_write_only_refuses_that_write(make_api: Any) -> None:
    """A quota that still fits small appends: the big one fails alone, atomically."""
    api: Api = await make_api()
    session = await api.session()
    sid = session["id"]
    pages = (await on_writer(api, "PRAGMA page_count"))[0][0]
    await on_writer(api, f"PRAGMA max_page_count={pages + 8}")
    before = await snapshot(api, sid)
    # within the PATCH bounds, and random so that the store's text compression
    # (eventstore/textcodec.py) cannot fit it into the few pages left
    noise = random.Random(7)
    body = "".join(noise.choices(string.ascii_letters + string.digits, k=90_000))
    huge = {"draft_body": body, "title": "big"}
    r = await api.client.patch(f"{S}/{sid}", json=huge, headers=api.h())
    assert_storage_error(r.status, await r.json(), "disk is full")
    assert await snapshot(api, sid) == before
    r = await api.client.patch(f"{S}/{sid}", json={"title": "small"}, headers=api.h())
    assert r.status == 200 and (await r.json())["session"]["title"] == "small"


async def hold_write_lock(path: str, seconds: float) -> None:
    """Another process's writer: takes the lock, keeps it, lets go."""

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            time.sleep(seconds)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    await asyncio.to_thread(hold)


async def lock_taken(path: str) -> None:
    """Wait until another connection holds the write lock."""
    for _ in range(200):
        probe = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        except sqlite3.OperationalError:
            return
        finally:
            probe.close()
        await asyncio.sleep(0.005)
    raise AssertionError("the lock holder never took the lock")


async def test_a_briefly_locked_database_is_waited_for(make_api: Any) -> None:
    api: Api = await make_api()
    session = await api.session()
    path = sqlite_store(api).path
    holder = asyncio.create_task(hold_write_lock(path, 0.4))
    await lock_taken(path)
    r = await api.client.patch(f"{S}/{session['id']}", json={"title": "late"}, headers=api.h())
    assert r.status == 200 and (await r.json())["session"]["title"] == "late"
    await holder


async def test_a_database_locked_for_long_gives_503_within_a_bound(make_api: Any) -> None:
    api: Api = await make_api()
    session = await api.session()
    sid = session["id"]
    store = sqlite_store(api)
    # the production wait is busy_timeout 5 s x (busy_retries + 1); shorten it for the test
    await on_writer(api, "PRAGMA busy_timeout=100")
    bound = 0.1 * (store.busy_retries + 1)
    before = await snapshot(api, sid)
    holder = asyncio.create_task(hold_write_lock(store.path, bound + 3.0))
    await lock_taken(store.path)
    started = time.monotonic()
    r = await api.client.patch(f"{S}/{sid}", json={"title": "blocked"}, headers=api.h())
    waited = time.monotonic() - started
    assert r.status == 503
    error = (await r.json())["error"]
    assert error["code"] == "storage_unavailable" and "locked" in error["message"], error
    assert waited < bound + 2.0, f"gave up after {waited:.2f}s, bound {bound:.2f}s"
    await holder
    assert await snapshot(api, sid) == before
    r = await api.client.patch(f"{S}/{sid}", json={"title": "free"}, headers=api.h())
    assert r.status == 200


async def wait_run(api: Api, run_id: str, within: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        r = await api.client.get(f"/api/runs/{run_id}", headers=api.h())
        run: dict[str, Any] = (await r.json())["run"]
        if run["status"] not in ("queued", "running"):
            return run
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} still {run['status']} after {within}s")


async def session_row(api: Api, sid: str) -> dict[str, Any]:
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    row: dict[str, Any] = (await r.json())["session"]
    return row


async def test_a_hung_engine_times_out_and_frees_the_session(make_api: Any) -> None:
    gate = asyncio.Event()  # never opened: the provider hangs mid-reply
    api: Api = await make_api(engine=ScriptedEngine(words=10, gate=gate), engine_timeout_s=0.3)
    sid = (await api.session())["id"]
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "hello"}, headers=api.h())
    assert r.status == 200
    run = await wait_run(api, (await r.json())["runId"])
    assert run["status"] == "failed" and "sent nothing for 0.3s" in run["error"], run
    row = await session_row(api, sid)
    assert row["task_status"] is None
    # the partial reply never became a message; the user's message did
    assert [m["role"] for m in row["messages"]] == ["user"]
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "again"}, headers=api.h())
    assert r.status == 200


class HangingExamples(ScriptedEngine):
    async def example(self, inp: ExampleInput) -> ExampleResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_hung_example_times_out_and_frees_the_session(make_api: Any) -> None:
    api: Api = await make_api(engine=HangingExamples(words=3), engine_timeout_s=0.3)
    sid = (await api.session())["id"]
    r = await api.client.patch(f"{S}/{sid}", json={"skeleton": SKELETON}, headers=api.h())
    assert r.status == 200
    leads = {"leads": [{"id": "L1", "first_name": "Ana"}, {"id": "L2"}]}
    r = await api.client.post(f"{S}/{sid}/generate-examples", json=leads, headers=api.h())
    assert r.status == 200, await r.text()
    run = await wait_run(api, (await r.json())["runId"])
    assert run["status"] == "failed" and "longer than 0.3s" in run["error"], run
    row = await session_row(api, sid)
    assert row["task_status"] is None and row["generated_examples"] is None


async def test_a_hung_openai_provider_times_out_and_frees_the_session(make_api: Any) -> None:
    pytest.importorskip("openai")
    from sessionstream.engines.openai_engine import OpenAIEngine
    from tests.fake_openai import Hang, Reply, run_fake_openai

    async with run_fake_openai() as (base_url, fake):
        engine = OpenAIEngine(
            base_url=base_url, api_key="dummy", model="fake", timeout_s=30, idle_timeout_s=30
        )
        api: Api = await make_api(engine=engine, engine_timeout_s=0.4)
        sid = (await api.session())["id"]
        # a provider that stalls mid-stream, then one that never answers at all
        fake.script(Reply(content="a reply that stops half way", piece=2, hang_after_chunks=3))
        fake.script(Hang())
        for message in ("first", "second"):
            r = await api.client.post(f"{S}/{sid}/turn", json={"message": message}, headers=api.h())
            assert r.status == 200, await r.text()
            run = await wait_run(api, (await r.json())["runId"])
            assert run["status"] == "failed" and "0.4s" in run["error"], run
            assert (await session_row(api, sid))["task_status"] is None


async def test_storage_failing_mid_run_frees_the_session_once_storage_is_back(
    make_api: Any,
) -> None:
    """Storage refuses for longer than a run waits (``SESSIONSTREAM_RUN_STORAGE_WAIT_S``,
    shortened here): the run cannot write its end while storage refuses; once storage is
    back, the run ends as failed and the session is free again, with nobody touching it."""
    gate = asyncio.Event()
    api: Api = await make_api(
        engine=ScriptedEngine(words=6, gate=gate), engine_timeout_s=5, run_storage_wait_s=0.3
    )
    sid = (await api.session())["id"]
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "hello"}, headers=api.h())
    run_id = (await r.json())["runId"]
    await asyncio.sleep(0.1)
    await on_writer(api, "PRAGMA query_only=1")
    gate.set()
    await asyncio.sleep(1.0)  # the run's appends fail; so do its attempts to end itself
    head = await api.app[STORE].head_position()
    assert (await session_row(api, sid))["task_status"] is not None
    await on_writer(api, "PRAGMA query_only=0")
    assert await api.app[STORE].head_position() == head
    for _ in range(100):
        if (await session_row(api, sid))["task_status"] is None:
            break
        await asyncio.sleep(0.05)
    assert (await session_row(api, sid))["task_status"] is None
    run = await wait_run(api, run_id)
    assert run["status"] == "failed", run
    assert run["error"].startswith("storage was unavailable for over 0.3s"), run
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "again"}, headers=api.h())
    assert r.status == 200


async def test_a_storage_blip_shorter_than_a_run_waits_leaves_the_turn_complete(
    make_api: Any,
) -> None:
    """The same read-only database, for a second: the run waits it out and completes."""
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(words=6, gate=gate), engine_timeout_s=5)
    sid = (await api.session())["id"]
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "hello"}, headers=api.h())
    run_id = (await r.json())["runId"]
    await asyncio.sleep(0.1)
    await on_writer(api, "PRAGMA query_only=1")
    gate.set()
    await asyncio.sleep(1.0)  # the run's appends are refused, and wait
    assert (await session_row(api, sid))["task_status"] is not None
    await on_writer(api, "PRAGMA query_only=0")
    run = await wait_run(api, run_id)
    assert run["status"] == "completed", run
    assert run["output"]["message"] == "".join(f"w{i} " for i in range(6))


@contextmanager
def tiny_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A real filesystem that can fill up: a small tmpfs (needs root and CAP_SYS_ADMIN)."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    with open(path, "wb") as handle:
        chunk = b"\0" * 65536
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def test_a_really_full_disk_gives_503_and_the_server_recovers(tmp_path: Path) -> None:
    """The real server on a real filesystem that runs out of space, then gets some back."""
    with (
        tiny_filesystem(tmp_path / "small", "3m") as disk,
        live_server(tmp_path, db_dir=disk) as live,
    ):
        sid = live.seeded_a.session_id
        token = live.token_a
        status, _, _ = live.call(token, "PATCH", f"{S}/{sid}", {"title": "before"})
        assert status == 200
        before = live.call(token, "GET", f"{S}/{sid}")[1]
        head = event_count(live.db)
        fill(disk / "filler")
        status, body, _ = live.call(token, "PATCH", f"{S}/{sid}", {"draft_body": "x" * 20_000})
        assert_storage_error(status, body, "disk is full")
        status, body, _ = live.call(token, "POST", f"{S}/{sid}/turn", {"message": "hi"})
        assert_storage_error(status, body, "disk is full")
        assert live.call(token, "GET", f"{S}/{sid}")[1] == before
        assert event_count(live.db) == head
        (disk / "filler").unlink()
        status, body, _ = live.call(token, "PATCH", f"{S}/{sid}", {"title": "after"})
        assert status == 200 and body["session"]["task_status"] is None, body
        status, body, _ = live.call(token, "POST", f"{S}/{sid}/turn", {"message": "hi"})
        assert status == 200, body


def event_count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        conn.close()


# bad input ---------------------------------------------------------------------------------
def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


@dataclass(frozen=True)
class Chunked:
    """A body sent with ``Transfer-Encoding: chunked``: no Content-Length to refuse early."""

    size: int

    async def stream(self) -> AsyncIterator[bytes]:
        yield b'{"title": "'
        for _ in range(self.size // 4096):
            yield b"z" * 4096
        yield b'"}'


def bad_inputs(sid: str, campaign: str) -> list[tuple[str, str, Any, dict[str, str]]]:
    """(method, url, body: bytes | JSON value, extra headers); each must be a 4xx."""
    big = b'{"title": "' + b"x" * (70 * 1024) + b'"}'
    none: dict[str, str] = {}
    one, turn, examples = f"{S}/{sid}", f"{S}/{sid}/turn", f"{S}/{sid}/generate-examples"
    deep_objects = b'{"skeleton": {"a": ' + b'{"a": ' * 30_000 + b"1" + b"}" * 30_001 + b"}"
    cases: list[tuple[str, str, Any, dict[str, str]]] = [
        # size
        ("PATCH", one, big, none),
        ("POST", turn, b'{"message": "' + b"y" * (70 * 1024) + b'"}', none),
        ("POST", "/api/campaigns", big, none),
        ("PATCH", one, Chunked(200 * 1024), none),
        ("POST", turn, Chunked(70 * 1024), none),
        ("POST", turn, {"message": "m" * 1001}, none),
        ("POST", examples, {"leads": [{"id": str(i)} for i in range(6)]}, none),
        ("POST", turn, {"message": "x", "sampleLeads": [{}] * 101}, none),
        ("POST", turn, {"message": "x", "availableVarNames": ["v"] * 201}, none),
        ("POST", turn, {"message": "x", "availableVarNames": ["v" * 101]}, none),
        # depth
        ("PATCH", one, {"skeleton": nested(65)}, none),
        ("PATCH", one, b'{"skeleton": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", none),
        ("PATCH", one, deep_objects, none),
        (
            "POST",
            turn,
            {"message": "x", "sequenceContext": {"prior_nodes": [nested(70)]}},
            none,
        ),
        # encoding
        ("PATCH", one, b'{"title": "\xff\xfe"}', none),
        ("PATCH", one, b'{"title": "\xc0\xaf"}', none),  # overlong '/'
        ("PATCH", one, b'{"title": "\xed\xa0\x80"}', none),  # a surrogate in UTF-8
        ("PATCH", one, '{"title": "utf16"}'.encode("utf-16"), none),
        ("POST", turn, b'{"message": "caf\xe9"}', none),  # latin-1
        ("PATCH", one, b'{"title": "\\ud800"}', none),  # lone surrogate escape
        ("POST", turn, b'{"message": "\\udfff tail"}', none),
        ("PATCH", one, b'{"skeleton": {"\\ud83d": 1}}', none),
        # numbers JSON does not have
        ("PATCH", one, b'{"skeleton": {"a": NaN}}', none),
        ("PATCH", one, b'{"skeleton": {"a": Infinity}}', none),
        ("PATCH", one, b'{"skeleton": {"a": -Infinity}}', none),
        ("PATCH", one, b'{"skeleton": {"a": 1e400}}', none),
        ("PATCH", one, b'{"skeleton": {"a": ' + b"9" * 5000 + b"}}", none),
        ("PATCH", one, {"framework_version": 2**60}, none),
        ("PATCH", one, {"framework_version": 1.5}, none),
        # not JSON / wrong shape
        ("PATCH", one, b"", none),
        ("PATCH", one, b"title=x", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("PATCH", one, b'{"title": "x"} trailing', none),
        ("PATCH", one, b'{"title": "x"', none),
        ("PATCH", one, [{"title": "x"}], none),
        ("PATCH", one, "a string", none),
        ("PATCH", one, None, none),
        ("PATCH", one, {"title": 5}, none),
        ("PATCH", one, {"messages": "not a list"}, none),
        ("PATCH", one, {"task_status": "sleeping"}, none),
        ("PATCH", one, {"no_such_field": 1}, none),
        ("PATCH", one, {"title": "x"}, {"If-Match": "not-a-version"}),
        ("PATCH", one, {"title": "x"}, {"If-Match": '"999999"'}),
        ("POST", turn, {"message": ""}, none),
        ("POST", turn, {}, none),
        ("POST", turn, {"message": ["list"]}, none),
        ("POST", examples, {"leads": []}, none),
        ("POST", examples, {"leads": [{"first_name": "no id"}]}, none),
        ("POST", examples, {"leads": [{"id": 7}]}, none),
        (
            "POST",
            examples,
            {"leads": [{"id": "a"}], "isFirstBatch": "yes"},
            none,
        ),
        ("POST", S, {"campaign_id": "nope", "node_id": "nope"}, none),
        ("POST", S, {"campaign_id": campaign}, none),
        ("POST", "/api/campaigns", {"name": ""}, none),
        ("POST", "/api/campaigns", {"name": "n" * 501}, none),
        ("POST", f"/api/campaigns/{campaign}/nodes", {"position": 0}, none),
        ("POST", f"/api/campaigns/{campaign}/nodes", {"position": "1"}, none),
        # paths and queries
        ("POST", f"{S}/not-a-uuid/turn", {"message": "hi"}, none),
        ("GET", f"{S}/{'9' * 5000}", None, none),
        ("GET", f"{S}?campaign_id=x", None, none),
        ("GET", S, None, none),
        ("GET", f"{S}/{sid}?as_of=yesterday", None, none),
        ("GET", f"{S}/{sid}?as_of=2026-01-01T00:00:00", None, none),
        ("GET", "/api/runs/run_not-a-run", None, none),
        ("PUT", one, {"title": "x"}, none),
    ]
    return cases


async def test_bad_inputs_are_refused_with_4xx_and_change_nothing(
    make_api: Any, request: pytest.FixtureRequest
) -> None:
    api: Api = await make_api(max_message_chars=1000, max_leads=5, max_body_bytes=64 * 1024)
    session = await api.session()
    sid = session["id"]
    before = await snapshot(api, sid)
    cases = bad_inputs(sid, session["campaign_id"])
    failures = []
    for method, url, body, headers in cases:
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
        if isinstance(body, Chunked):
            kwargs = {"data": body.stream()}
        elif body is None:
            kwargs = {}
        r = await api.client.request(method, url, headers={**api.h(), **headers}, **kwargs)
        text = await r.text()
        shaped = False
        try:
            error = (await r.json(content_type=None))["error"]
            shaped = bool(error["code"]) and bool(error["message"])
        except (ValueError, KeyError, TypeError):
            pass
        if not (400 <= r.status < 500 and shaped):
            failures.append((method, url[:80], repr(body)[:60], r.status, text[:160]))
    assert not failures, "\n".join(map(str, failures))
    assert await snapshot(api, sid) == before
    # and the service still works
    r = await api.client.patch(f"{S}/{sid}", json={"title": "fine"}, headers=api.h())
    assert r.status == 200
    report(request.config, f"faults: {len(cases)} bad inputs tried, all 4xx, nothing written")


async def test_a_bad_request_never_fails_the_good_ones_batched_with_it(make_api: Any) -> None:
    """Group commit puts concurrent appends in one transaction: one client's bad data
    must fail alone, never the batch (a 503 for everyone)."""
    api: Api = await make_api()
    sessions = [(await api.session())["id"] for _ in range(8)]
    poison = b'{"title": "\\ud800"}'

    async def patch(sid: str, n: int) -> int:
        if n % 3 == 0:
            r = await api.client.patch(f"{S}/{sid}", data=poison, headers=api.h())
        else:
            r = await api.client.patch(f"{S}/{sid}", json={"title": f"t{n}"}, headers=api.h())
        return r.status

    for _ in range(5):
        statuses = await asyncio.gather(*(patch(s, n) for n, s in enumerate(sessions)))
        for n, status in enumerate(statuses):
            assert status == (400 if n % 3 == 0 else 200), statuses
