"""The log's clock on every backend: time never falls back along positions, and
``position_at`` (``as_of=<time>``) answers exactly what a scan would, by a seek.

``eventstore/clock.py`` has the argument; these tests check both halves of it
against a scan: appends on a clock that steps back, and logs whose time falls
back because they were imported or written before appends clamped.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest

from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.clock import exceptions, stamp
from sessionstream.eventstore.model import GENESIS_HASH, NewEvent, RecordedEvent, record_event
from tests.contract.conftest import StoreFactory


def at(second: int) -> str:
    return f"2026-01-01T00:{second // 60:02d}:{second % 60:02d}.000Z"


def ev(**data: Any) -> NewEvent:
    return NewEvent("thing.happened", data)


async def whole_log(store: EventStore) -> list[RecordedEvent]:
    return await store.read_all(0, limit=100_000)


def scanned(log: list[RecordedEvent], t: str) -> int:
    """What ``position_at`` means, by reading every event."""
    return max((e.position for e in log if e.recorded_at <= t), default=0)


def probes(log: list[RecordedEvent]) -> Iterator[str]:
    """Every recorded time, and times between and around them."""
    for e in log:
        yield e.recorded_at
        yield e.recorded_at[:-1] + "1Z"  # a millisecond later
        yield e.recorded_at[:-2] + "Z"  # just before (a shorter string sorts first)
    yield "1970-01-01T00:00:00.000Z"
    yield "9999-12-31T23:59:59.999Z"


async def assert_seeks_like_a_scan(store: EventStore, log: list[RecordedEvent]) -> None:
    for t in probes(log):
        assert await store.position_at(t) == scanned(log, t), t


def test_a_batch_is_stamped_with_now_or_the_newest_time_already_recorded() -> None:
    assert stamp(at(5), None) == at(5)
    assert stamp(at(5), at(3)) == at(5)
    assert stamp(at(5), at(9)) == at(9)


def test_exceptions_are_the_events_below_the_running_maximum() -> None:
    times = [4, 6, 5, 6, 2, 7, 7, 3]
    log = [
        RecordedEvent(i, "s", i, f"e{i}", "t", {}, {}, None, at(s), "")
        for i, s in enumerate(times, 1)
    ]
    found, newest = exceptions(log, at(5))
    assert found == [(1, at(4)), (3, at(5)), (5, at(2)), (8, at(3))]
    assert newest == at(7)
    assert exceptions(log, None)[0] == [(3, at(5)), (5, at(2)), (8, at(3))]


@pytest.fixture
def stepping_clock(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every writer's clock reads these times in turn (then the last one for ever)."""
    times = [at(s) for s in (10, 12, 11, 11, 5, 20, 19, 21, 3, 3, 30)]
    ticks = count()

    def now() -> str:
        return times[min(next(ticks), len(times) - 1)]

    from sessionstream.eventstore.sqlite import writer as sqlite_writer

    monkeypatch.setattr(sqlite_writer, "utc_now", now)
    try:
        from sessionstream.eventstore.postgres import writer as pg_writer
    except ImportError:  # no asyncpg: the PostgreSQL leg skips on its own
        pass
    else:
        monkeypatch.setattr(pg_writer, "utc_now", now)
    return times


async def test_time_never_falls_back_along_positions_when_the_clock_does(
    store: EventStore, stepping_clock: list[str]
) -> None:
    for i in range(6):  # one batch per append: each reads the clock once
        await store.append(f"s-{i % 2}", [ev(i=i), ev(i=i, again=True)])
    await asyncio.gather(*(store.append(f"c-{i}", [ev(i=i)]) for i in range(12)))
    log = await whole_log(store)
    assert len(log) == 24
    times = [e.recorded_at for e in log]
    assert times == sorted(times)
    assert at(12) in times and at(20) in times  # the clock was read, not frozen
    assert at(11) not in times and at(5) not in times  # the times it fell back to
    await assert_seeks_like_a_scan(store, log)


def imported(times: list[int]) -> list[RecordedEvent]:
    """A log as an export holds it, whose time falls back (hashes as appends made them)."""
    log: list[RecordedEvent] = []
    heads: dict[str, str] = {}
    for position, second in enumerate(times, 1):
        stream = f"s-{position % 3}"
        version = sum(1 for e in log if e.stream_id == stream) + 1
        record = record_event(
            ev(n=position),
            position=position,
            stream_id=stream,
            version=version,
            prev_hash=heads.get(stream, GENESIS_HASH),
            at=at(second),
        )
        heads[stream] = record.hash
        log.append(record)
    return log


async def test_an_imported_log_whose_time_falls_back_answers_like_a_scan(
    store: EventStore,
) -> None:
    log = imported([10, 12, 11, 15, 15, 2, 16, 20, 18, 18, 21, 1, 22])
    await store.import_events(log[:7])
    await store.import_events(log[7:])  # the second chunk starts below the first's maximum
    assert await whole_log(store) == log
    await assert_seeks_like_a_scan(store, log)
    appended = await store.append("after", [ev(late=True)])  # stamped at now, past them all
    log.append(appended.events[0])
    await assert_seeks_like_a_scan(store, log)


async def test_a_store_written_before_appends_clamped_gets_its_exceptions_on_open(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory()
    for i in range(9):
        await store.append(f"s-{i % 2}", [ev(i=i)])
    times = [at(s) for s in (10, 14, 12, 15, 15, 3, 16, 16, 11)]
    if store_factory.backend == "sqlite":
        path = store.path  # type: ignore[attr-defined]
        await store.close()
        conn = sqlite3.connect(path)
        with conn:
            conn.executemany(
                "UPDATE events SET recorded_at = ? WHERE position = ?",
                [(t, p) for p, t in enumerate(times, 1)],
            )
            conn.execute("DROP TABLE clock_exceptions")
        conn.execute("PRAGMA user_version=1")
        conn.close()
    else:
        async with store._reader.require_pool().acquire() as conn:  # type: ignore[attr-defined]
            await conn.executemany(
                "UPDATE events SET recorded_at = $1 WHERE position = $2",
                [(t, p) for p, t in enumerate(times, 1)],
            )
            await conn.execute(
                "DROP TABLE clock_exceptions, packs; "
                "DELETE FROM schema_migrations WHERE version >= 4; "
                "DROP INDEX events_recorded_at; CREATE INDEX events_recorded_at ON events "
                "(recorded_at)"
            )
        await store.close()
    reopened = await store_factory()
    log = await whole_log(reopened)
    assert [e.recorded_at for e in log] == times
    await assert_seeks_like_a_scan(reopened, log)


async def test_as_of_by_time_is_one_index_seek(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await store.append("s", [ev(i=i) for i in range(50)])
    if store_factory.backend == "sqlite":
        from sessionstream.eventstore.sqlite.schema import POSITION_AT

        conn = sqlite3.connect(store.path)  # type: ignore[attr-defined]
        plan = " | ".join(
            row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {POSITION_AT}", (at(1),))
        )
        conn.close()
        assert "SEARCH events USING COVERING INDEX events_recorded_at (recorded_at<?)" in plan
        assert "SCAN events" not in plan and "TEMP B-TREE" not in plan, plan
    else:
        from sessionstream.eventstore.postgres.schema import POSITION_AT as PG_POSITION_AT

        async with store._reader.require_pool().acquire() as conn:  # type: ignore[attr-defined]
            await conn.execute("SET enable_seqscan = off")  # as a large table would plan it
            rows = await conn.fetch(f"EXPLAIN {PG_POSITION_AT}", at(1))
        plan = " | ".join(r[0] for r in rows)
        assert "Index Only Scan Backward using events_recorded_at" in plan, plan
        assert "Sort" not in plan, plan
