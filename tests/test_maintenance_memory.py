"""Maintenance commands hold a page, not the store: peak RSS of each, as a subprocess.

A store of a few hundred sessions whose documents are large (every session
holds ~200 KB of messages) is verified, exported, imported and rebuilt by the
real CLI in a child process; each command's peak RSS above the same command's
on a tiny store must stay under ``ROOM``. Holding every document (what
``verify`` and ``rebuild`` did) or every exported event (the import's audit)
costs several times ``ROOM`` here. Memory bounds, not time bounds: the figures
at 10^6 events are ``bench/maintenance.py``'s.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sessionstream import projections
from sessionstream.core.errors import ValidationFailed
from sessionstream.core.vocabulary import session_stream
from sessionstream.eventstore.model import NewEvent, RecordedEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.transfer import IdFilter, ImportPlan, check

#: ru_maxrss is KiB on Linux (bytes elsewhere), and the CI machines are Linux
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB is Linux's")

SESSIONS = 300
MESSAGES = 100
CONTENT = 2000  # characters a message: ~200 KB a session document, ~60 MB of documents
#: MB a command may grow past its own run on a tiny store
ROOM = 45

#: starts the command from a small interpreter and prints the child's own peak RSS
#: (a child forked from pytest would start from pytest's high-water mark)
LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def peak_mb(*args: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "sessionstream", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    rss, code = done.stdout.split()
    assert code == "0", (args, done.stderr)
    return int(rss) / 1024


def message(n: int, i: int) -> NewEvent:
    text = f"{n}:{i} " + "x" * CONTENT
    return NewEvent("message.appended", {"role": "user", "content": text})


async def build(path: Path, sessions: int) -> None:
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    try:
        for n in range(sessions):
            sid = f"{n:08d}-0000-4000-8000-000000000000"
            created = NewEvent(
                "session.created",
                {"id": sid, "user_id": "u1", "campaign_id": "c1", "node_id": "n1"},
            )
            await store.append(
                session_stream(sid), [created, *(message(n, i) for i in range(MESSAGES))]
            )
    finally:
        await store.close()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("memory")
    paths = {"big": root / "big.db", "tiny": root / "tiny.db"}
    asyncio.run(build(paths["big"], SESSIONS))
    asyncio.run(build(paths["tiny"], 2))
    return paths


@pytest.mark.parametrize("command", ["verify", "export", "import", "rebuild"])
def test_a_maintenance_command_holds_a_page_not_the_store(
    stores: dict[str, Path], tmp_path: Path, command: str
) -> None:
    def run(size: str) -> float:
        db = stores[size]
        if command == "export":
            return peak_mb("export", "--db", str(db), "--out", str(tmp_path / f"{size}.ndjson"))
        if command == "import":
            dump = tmp_path / f"{size}-dump.ndjson"
            peak_mb("export", "--db", str(db), "--out", str(dump))
            return peak_mb("import", str(dump), "--db", str(tmp_path / f"{size}-copy.db"))
        return peak_mb(command, "--db", str(db))

    tiny, big = run("tiny"), run("big")
    assert big - tiny < ROOM, f"{command}: {big:.0f} MB against {tiny:.0f} MB on a tiny store"


# the import's check: no event held, every repeat found ------------------------------------


def test_the_id_filter_never_forgets_an_id_as_it_grows() -> None:
    ids = IdFilter(capacity=64)
    names = [f"id-{n}" for n in range(5000)]
    new = [not ids.add(name) for name in names]
    assert sum(new) > 4900  # a false "perhaps" now and then, never most of the time
    assert all(ids.add(name) for name in names)  # every one is at least "perhaps"


def test_check_finds_a_repeated_id_with_a_second_read_only_when_one_may_repeat() -> None:
    ids = [f"e{n}" for n in range(1, 3001)]
    reads: list[int] = []

    def read(chosen: list[str]) -> Iterator[RecordedEvent]:
        reads.append(1)
        return versioned(chosen)

    plan = check(lambda: read(ids))
    assert isinstance(plan, ImportPlan) and (plan.events, plan.first, plan.last) == (3000, 1, 3000)
    assert len(reads) <= 2
    reads.clear()
    repeated = [*ids[:2000], ids[17], *ids[2001:]]
    with pytest.raises(ValidationFailed, match="position 2001: event id e18 repeats"):
        check(lambda: read(repeated))
    assert len(reads) == 2


def versioned(ids: list[str]) -> Iterator[RecordedEvent]:
    """One stream per event: versions are always 1, positions 1, 2, ..."""
    for n, ident in enumerate(ids, 1):
        yield RecordedEvent(
            position=n,
            stream_id=f"s{n}",
            version=1,
            event_id=ident,
            type="t",
            data={},
            metadata={},
            correlation_id=None,
            recorded_at="2026-01-01T00:00:00.000Z",
            hash="0" * 64,
        )
