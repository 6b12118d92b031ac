"""A commit whose wait for the synchronous standby was cut short is never published.

PostgreSQL writes a commit locally, then waits for the synchronous standby;
if that wait is cancelled (a client's timeout sends a cancel, a terminated
connection or a shutdown ends it), the commit becomes visible on the primary
before any standby has it, and a failover takes it back. A node's event
pump that published it would send subscribers frames the log no longer
holds (docs/guides/failover.md, "phantom frames").

Here a cluster of its own (unix socket only, in a folder under ``/tmp``, as
the ``postgres`` user) names a synchronous standby that never connects, so
every commit waits. Node A's append is cancelled by its statement timeout:
its events are visible on the primary, and not durable. Node B must not
publish them, though it sees the head move; once the commit is durable (here:
no synchronous standby is asked for any more) it publishes them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionstream.core.errors import StorageUnavailable
from sessionstream.eventstore.model import NewEvent
from tests.failover.formation import FormationUnavailable, pg_bindir
from tests.pg import unavailable

asyncpg = pytest.importorskip("asyncpg")

from sessionstream.eventstore.postgres import PostgresEventStore  # noqa: E402

pytestmark = [pytest.mark.failover, pytest.mark.timeout(120)]


def _as_postgres(*args: str) -> None:
    subprocess.run(
        args, user="postgres", group="postgres", extra_groups=[], check=True,
        capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def cluster() -> Iterator[Path]:
    """A throwaway PostgreSQL listening only on a unix socket in its own folder."""
    import os

    if os.geteuid() != 0:
        unavailable("runs PostgreSQL as postgres: needs root")
    try:
        bindir = pg_bindir()
    except FormationUnavailable as exc:
        unavailable(str(exc))
        raise AssertionError("unreachable") from exc
    root = Path(tempfile.mkdtemp(prefix="sessionstream-synccancel-", dir="/tmp"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    try:
        _as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
        options = f"-c listen_addresses='' -c unix_socket_directories={root} -c fsync=off"
        log = str(root / "postgres.log")  # the server's output, not pg_ctl's pipes
        _as_postgres(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", log, "-o", options, "-w", "start"
        )
        yield root
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                user="postgres", group="postgres", extra_groups=[], capture_output=True,
                timeout=60,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


async def _sql(dsn: str, query: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(query)
    finally:
        await conn.close()


async def test_a_commit_cut_short_of_the_standby_is_not_published(cluster: Path) -> None:
    dsn = f"postgresql://postgres@/postgres?host={cluster}"
    a = PostgresEventStore(dsn, schema="s", pool_size=2, statement_timeout_s=1.0)
    b = PostgresEventStore(dsn, schema="s", pool_size=2, poll_interval_s=0.1)
    await a.open()
    await b.open()
    try:
        first = await a.append("s-1", [NewEvent("x", {"n": 0})])
        head = first.events[-1].position
        for _ in range(100):
            if b.hub.published_position >= head:
                break
            await asyncio.sleep(0.05)
        assert b.hub.published_position == head

        # a synchronous standby that never comes: every commit waits for it
        await _sql(dsn, "ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        await _sql(dsn, "SELECT pg_reload_conf()")
        await asyncio.sleep(0.5)
        with pytest.raises(StorageUnavailable, match="did not answer in time"):
            await a.append("s-1", [NewEvent("x", {"n": 1})])  # cancelled after 1 s
        for _ in range(100):  # its wait for the standby cancelled, as a client's timeout does
            await _sql(
                dsn,
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
                "AND application_name LIKE 'sessionstream-writer%'",
            )
            if await b.head_position() == head + 1:
                break
            await asyncio.sleep(0.05)
        assert await b.head_position() == head + 1  # visible on the primary...
        await asyncio.sleep(1.5)  # ...and in B's pump's reach for 15 polls
        assert b.hub.published_position == head, "published a commit no standby has"

        await _sql(dsn, "ALTER SYSTEM SET synchronous_standby_names = ''")
        await _sql(dsn, "SELECT pg_reload_conf()")
        for _ in range(100):
            if b.hub.published_position > head:
                break
            await asyncio.sleep(0.05)
        assert b.hub.published_position == head + 1
    finally:
        await a.close()
        await b.close()
