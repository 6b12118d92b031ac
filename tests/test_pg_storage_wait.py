"""Requests wait out a storage outage (``eventstore/storagewait.py``), within bounds.

Storage is made to refuse by raising driver errors where the store meets
the driver, as a failover would: a lost connection, a read-only host. A
request that meets such a refusal must wait and succeed once storage
answers; a write whose commit landed but whose answer was lost must be
answered as written, once; past the wait, or past the number of waiters,
the answer is a 503 with ``Retry-After``; ``/healthz`` never waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sessionstream.core.errors import StorageUnavailable
from sessionstream.eventstore.model import AppendRequest, NewEvent
from sessionstream.server.keys import STORE
from tests.pg import DSN, served_session, throwaway_schema
from tests.supervision.helpers import wait_for

asyncpg = pytest.importorskip("asyncpg")

from asyncpg.connection import Connection  # noqa: E402

from sessionstream.eventstore.postgres import PostgresEventStore  # noqa: E402
from sessionstream.eventstore.postgres import schema as sql  # noqa: E402

pytestmark = pytest.mark.postgres

S = "/api/campaigns/ai-chat-sessions"


class Outage:
    """Makes one role's statements fail: ``refuse`` until ``end()``; ``lose_answers``
    lets the write statement run (and commit) and then loses its answer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, role: str) -> None:
        self.role = role
        self.refusing: BaseException | None = None
        self.matching = ""
        self.answers_to_lose = 0
        self.refused = 0
        for name in ("fetch", "fetchval", "fetchrow", "execute"):
            monkeypatch.setattr(Connection, name, self._wrap(getattr(Connection, name)))

    def refuse(self, error: BaseException, matching: str = "") -> None:
        self.refusing, self.matching = error, matching

    def end(self) -> None:
        self.refusing = None

    def _mine(self, conn: Any) -> bool:
        name = conn.get_settings().application_name
        return bool(name.split(":")[0] == f"sessionstream-{self.role}")

    def _wrap(self, original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def method(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            if self.refusing is not None and self._mine(conn) and self.matching in query:
                self.refused += 1
                raise self.refusing
            result = await original(conn, query, *args, **kwargs)
            if self.answers_to_lose and query == sql.WRITE_BATCH_AT_HEAD and self._mine(conn):
                self.answers_to_lose -= 1
                raise ConnectionResetError("the answer to a commit was lost")
            return result

        return method


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async for name in throwaway_schema("test_pgwait"):
        yield name


async def test_a_commit_whose_answer_was_lost_is_answered_once_as_written(
    schema: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, h, sid = await served_session(schema, tmp_path, aiohttp_client)
    store = client.app[STORE]
    outage = Outage(monkeypatch, "writer")
    outage.answers_to_lose = 1
    r = await client.patch(f"{S}/{sid}", json={"title": "once"}, headers=h)
    assert r.status == 200, await r.text()
    assert outage.answers_to_lose == 0  # the commit landed, its answer did not
    assert (await r.json())["session"]["title"] == "once"
    patched = [e for e in await store.read_stream(f"session-{sid}") if e.type == "session.patched"]
    assert [e.data["fields"]["title"] for e in patched] == ["once"]
    assert int(r.headers["ETag"].strip('"')) >= patched[0].version

    # a claim answered as a client's retry would start no run: the session would stay busy
    outage.answers_to_lose = 1
    r = await client.post(f"{S}/{sid}/turn", json={"message": "hi"}, headers=h)
    assert r.status == 200, await r.text()
    run_id = (await r.json())["runId"]
    assert outage.answers_to_lose == 0
    assert store._writer.sent.own_commits_found == 2

    deadline = time.monotonic() + 20
    while (run := await store.get_doc("run", run_id)) is None or run.body["status"] != "completed":
        assert time.monotonic() < deadline, run
        await asyncio.sleep(0.05)
    claims = [e for e in await store.read_stream(f"session-{sid}") if e.type == "run.claimed"]
    assert len(claims) == 1


async def test_a_lost_answer_in_a_batch_store_level(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresEventStore(DSN, schema=schema, pool_size=2, storage_wait_s=10.0)
    await store.open()
    try:
        outage = Outage(monkeypatch, "writer")
        outage.answers_to_lose = 1
        requests = [[AppendRequest(f"s-{n}", (NewEvent("x", {"n": n}),), 0)] for n in range(5)]
        results = await asyncio.gather(*(store.transact(r) for r in requests))
        assert outage.answers_to_lose == 0
        assert all(not r[0].duplicate and r[0].version == 1 for r in results)
        assert [len(await store.read_stream(f"s-{n}")) for n in range(5)] == [1] * 5
        # a client's own retry of a stored append is still a duplicate
        [again] = await store.transact(requests[0])
        assert again.duplicate
    finally:
        await store.close()


async def test_past_the_wait_a_write_is_a_503_with_retry_after_and_the_next_fails_at_once(
    schema: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, h, sid = await served_session(schema, tmp_path, aiohttp_client, storage_wait_s=1.0)
    outage = Outage(monkeypatch, "writer")
    outage.refuse(asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"))
    began = time.monotonic()
    r = await client.patch(f"{S}/{sid}", json={"title": "late"}, headers=h)
    waited = time.monotonic() - began
    assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
    assert (await r.json())["error"]["code"] == "storage_unavailable"
    assert waited >= 1.0 and outage.refused > 1  # tried again while it waited
    tries = outage.refused
    began = time.monotonic()
    r = await client.patch(f"{S}/{sid}", json={"title": "later"}, headers=h)
    assert r.status == 503 and time.monotonic() - began < 1.0  # the outage outlasted the wait
    assert outage.refused == tries + 1
    outage.end()
    r = await client.patch(f"{S}/{sid}", json={"title": "back"}, headers=h)
    assert r.status == 200


async def test_a_lost_answer_given_up_says_the_write_may_have_landed(
    schema: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every other 503 means nothing was written; this one cannot: the commit went out
    and its answer was lost, and no later try found out (no wait here). A client that
    retried blindly would patch twice, so the code tells it to read first."""
    client, h, sid = await served_session(schema, tmp_path, aiohttp_client, storage_wait_s=0.0)
    outage = Outage(monkeypatch, "writer")
    outage.answers_to_lose = 1
    r = await client.patch(f"{S}/{sid}", json={"title": "maybe"}, headers=h)
    assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
    error = (await r.json())["error"]
    assert error["code"] == "outcome_unknown" and "may have been written" in error["message"]
    r = await client.get(f"{S}/{sid}", headers=h)
    assert (await r.json())["session"]["title"] == "maybe"  # it had landed
    # a statement storage answered with a refusal did not commit: the usual 503
    outage.refuse(asyncpg.exceptions.ReadOnlySQLTransactionError("read-only"))
    r = await client.patch(f"{S}/{sid}", json={"title": "never"}, headers=h)
    assert r.status == 503 and (await r.json())["error"]["code"] == "storage_unavailable"
    outage.end()
    r = await client.get(f"{S}/{sid}", headers=h)
    assert (await r.json())["session"]["title"] == "maybe"


async def test_a_write_waits_for_storage_while_healthz_answers(
    schema: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, h, sid = await served_session(schema, tmp_path, aiohttp_client, storage_wait_s=30.0)
    outage = Outage(monkeypatch, "writer")
    outage.refuse(ConnectionRefusedError("refused"))
    patch = asyncio.ensure_future(client.patch(f"{S}/{sid}", json={"title": "w"}, headers=h))
    await wait_for(lambda: outage.refused >= 2)
    assert not patch.done()
    # the host itself takes writes (only this node's writer is refused): the probe,
    # which never waits, finds it writable and says so
    r = await client.get("/healthz")
    assert r.status == 200 and (await r.json())["status"] == "ok"
    assert not patch.done()
    outage.end()
    r = await patch
    assert r.status == 200 and (await r.json())["session"]["title"] == "w"


async def test_reads_wait_only_so_many_at_once_and_healthz_never_waits(
    schema: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, h, sid = await served_session(
        schema, tmp_path, aiohttp_client, storage_wait_s=30.0, storage_max_waiting=1
    )
    store = client.app[STORE]
    outage = Outage(monkeypatch, "reader")
    outage.refuse(ConnectionResetError("reset"), "FROM docs")
    first = asyncio.ensure_future(client.get(f"{S}/{sid}", headers=h))
    await wait_for(lambda: store.read_wait.waiting == 1)
    r = await client.get(f"{S}/{sid}", headers=h)  # one waiter too many: refused at once
    assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
    assert "already wait" in (await r.json())["error"]["message"]
    outage.refuse(ConnectionResetError("reset"), "log_head")
    r = await client.get("/healthz")
    body = await r.json()
    assert r.status == 503 and "reset" in body["error"]["message"], body
    outage.end()
    r = await first
    assert r.status == 200, await r.text()
    assert store.read_wait.waiting == 0 and store.read_wait.rode_out >= 1


async def test_a_full_disk_is_not_waited_for(
    schema: str, tmp_path: Path, aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, h, sid = await served_session(schema, tmp_path, aiohttp_client, storage_wait_s=30.0)
    outage = Outage(monkeypatch, "writer")
    outage.refuse(asyncpg.exceptions.DiskFullError("full"))
    r = await client.patch(f"{S}/{sid}", json={"title": "x"}, headers=h)
    assert r.status == 503 and outage.refused == 1
    assert "disk is full" in (await r.json())["error"]["message"]


def test_a_refusal_translated_is_judged_by_its_cause() -> None:
    from sessionstream.eventstore.postgres.errors import transient, translate_pg_error

    try:
        try:
            raise ConnectionResetError("x")
        except ConnectionResetError as exc:
            raise translate_pg_error(exc) from exc
    except StorageUnavailable as translated:
        assert transient(translated)
    assert not transient(StorageUnavailable("no cause"))
    assert not transient(asyncpg.exceptions.DiskFullError("full"))
    assert transient(asyncpg.exceptions.ReadOnlySQLTransactionError("ro"))
