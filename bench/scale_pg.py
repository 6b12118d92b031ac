"""``bench.scale --postgres``: the same logs in PostgreSQL, in a throwaway schema.

The log measured on SQLite is exported (``sessionstream export``, already
timed there) and loaded with ``sessionstream import --database-url``: the
project's own write path for moving a log between backends, which keeps
every event, position and hash, so both backends are measured on the same
log. The schema is named in the URL's ``search_path``, analysed after the
import and dropped afterwards.
Appends repeat on the one imported schema (re-importing 10^6 events per
round would take longer than the rest together), so later rounds see a few
thousand more events than the first.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bench.common import median
from bench.scale_build import Built, progress
from bench.scale_measure import (
    append_round,
    cli,
    quantiles,
    read_round,
    settings_for,
    single_appends,
)
from sessionstream import projections

PG_DSN = os.environ.get(
    "SESSIONSTREAM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def unavailable() -> str | None:
    """Why PostgreSQL cannot be measured here, or None."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'sessionstream[postgres]')"

    async def ping() -> None:
        conn = await asyncpg.connect(PG_DSN, timeout=5)
        await conn.close()

    try:
        asyncio.run(ping())
    except (OSError, asyncpg.PostgresError) as exc:
        return f"no PostgreSQL at {PG_DSN}: {exc}"
    return None


@asynccontextmanager
async def throwaway_schema() -> AsyncIterator[str]:
    """A database URL whose ``search_path`` is a new schema, dropped on exit."""
    import asyncpg

    name = f"bench_scale_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        yield f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}search_path={name}"
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


async def analyze(url: str) -> None:
    """Table statistics now, as autovacuum would gather them in a while: the figures are
    then of a settled database, not of whichever moment autovacuum picks during a round."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def _appends(url: str, appenders: int, per_appender: int, singles: int) -> dict[str, float]:
    from sessionstream.eventstore.postgres import PostgresEventStore

    async with PostgresEventStore(url, projections.ALL) as store:
        rate = await append_round(store, appenders, per_appender)
        times = await single_appends(store, singles)
    return {"append_100_per_s": rate, **quantiles("append_single", times)}


async def _measure(
    built: Built, export: Path, rounds: int, requests: int, appends: tuple[int, int, int]
) -> dict[str, float]:
    async with throwaway_schema() as url:
        progress(f"postgres {built.events:,} events: importing {export.name}")
        imported = cli("import", "--database-url", url, str(export))
        await analyze(url)
        values: dict[str, list[float]] = {}
        for n in range(rounds):
            progress(f"postgres {built.events:,} events: reads and appends, round {n + 1}")
            figures = await read_round(settings_for(url=url), built, requests)
            figures |= await _appends(url, *appends)
            for key, value in figures.items():
                values.setdefault(key, []).append(value)
    out = {key: median(v) for key, v in values.items()}
    out["import_s"], out["import_rss_mb"] = imported["s"], imported["rss_mb"]
    return out


def measure(
    built: Built, export: Path, rounds: int, requests: int, appends: tuple[int, int, int]
) -> dict[str, float]:
    """Figures of one log in PostgreSQL: appends, GET, lists, ``as_of``, catch-up."""
    return asyncio.run(_measure(built, export, rounds, requests, appends))
