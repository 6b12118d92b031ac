"""``bench.scale --postgres``: the same logs in PostgreSQL, in a throwaway schema.

The log measured on SQLite is exported (``sessionstream export``, already
timed there) and loaded with ``sessionstream import --database-url``: the
project's own write path for moving a log between backends, which keeps
every event, position and hash, so both backends are measured on the same
log. The schema is named in the URL's ``search_path``, vacuumed and
analysed after the import (what autovacuum does to a freshly loaded table a
little later) and dropped afterwards.

On that schema, in this order: the bytes the schema's relations take
(``pg_total_relation_size``: heap, TOAST and indexes); the reads over HTTP,
``--rounds`` times; ``verify``, ``export`` and ``rebuild`` as subprocesses of
the CLI (wall time, peak RSS); then the appends, ``--rounds`` times, each
round beside the same appends on an empty schema. Appends come last because
they repeat on the one imported schema (re-importing 10^6 events per round
would take longer than the rest together), so later rounds see 10,300 more
events per round than the first, and the maintenance commands before them see
the imported log alone.
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
#: the store's pool while appending: the server is shared, and appends go through the
#: one writer connection anyway (group commit), so a few readers are plenty
POOL = 4
#: every relation of the schema with its TOAST and indexes; by relation, largest first
RELATION_BYTES = """
SELECT c.relname, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'm')
ORDER BY 2 DESC
"""


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
    finally:
        await conn.close()
    try:
        yield f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}search_path={name}"
    finally:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()


async def settle(url: str) -> None:
    """Vacuum and statistics now, as autovacuum would do after a bulk load in a while: the
    figures are then of a settled database (visibility map set, so index-only scans can
    be), not of whichever moment autovacuum picks during a round."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        tables = [
            row[0]
            for row in await conn.fetch(
                "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema()"
            )
        ]
        # the schema's own tables: a bare VACUUM would take every schema of the database
        await conn.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")
    finally:
        await conn.close()


async def shape(url: str, built: Built) -> dict[str, float]:
    """Bytes the schema's relations take per event and per chat turn, and the events
    table's share of them."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        sizes = {name: int(size) for name, size in await conn.fetch(RELATION_BYTES)}
        events = int(await conn.fetchval("SELECT head FROM log_head WHERE id = 1"))
    finally:
        await conn.close()
    total = sum(sizes.values())
    return {
        "events": events,
        "file_mb": total / 2**20,
        "bytes_per_event": total / max(1, events),
        "bytes_per_turn": total / max(1, built.turns),
        "events_table_share": sizes.get("events", 0) / max(1, total),
    }


def maintenance(url: str, work: Path, events: int) -> dict[str, float]:
    """``verify``, ``export`` and ``rebuild`` of the schema: wall time and peak RSS each."""
    out: dict[str, float] = {}
    exported = work / "pg-export.ndjson"
    for command, extra in (
        ("verify", ()),
        ("export", ("--out", str(exported))),
        ("rebuild", ()),
    ):
        progress(f"postgres {events:,} events: sessionstream {command}")
        for key, value in cli(command, "--database-url", url, *extra).items():
            out[f"{command}_{key}"] = value
    exported.unlink(missing_ok=True)
    return out


async def appends_on(url: str, appenders: int, per_appender: int, singles: int) -> dict[str, float]:
    from sessionstream.eventstore.postgres import PostgresEventStore

    async with PostgresEventStore(url, projections.ALL, pool_size=POOL) as store:
        rate = await append_round(store, appenders, per_appender)
        times = await single_appends(store, singles)
    return {"append_100_per_s": rate, **quantiles("append_single", times)}


async def append_figures(url: str, appends: tuple[int, int, int]) -> dict[str, float]:
    """The appends on the imported schema, then the same on an empty one (the baseline)."""
    subject = await appends_on(url, *appends)
    async with throwaway_schema() as empty:
        baseline = await appends_on(empty, *appends)
    subject["append_100_empty_per_s"] = baseline["append_100_per_s"]
    subject["append_100_vs_empty"] = subject["append_100_per_s"] / baseline["append_100_per_s"]
    return subject


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: median([one[key] for one in rounds if key in one]) for key in rounds[0]}


async def _measure(
    built: Built,
    export: Path,
    rounds: int,
    requests: int,
    appends: tuple[int, int, int],
    *,
    maintain: bool,
) -> dict[str, float]:
    size = f"postgres {built.events:,} events"
    async with throwaway_schema() as url:
        progress(f"{size}: importing {export.name}")
        imported = cli("import", "--database-url", url, str(export))
        progress(f"{size}: VACUUM ANALYZE")
        await settle(url)
        out = await shape(url, built)
        out["import_s"], out["import_rss_mb"] = imported["s"], imported["rss_mb"]
        reads = []
        for n in range(rounds):
            progress(f"{size}: reads over HTTP, round {n + 1} of {rounds}")
            reads.append(await read_round(settings_for(url=url), built, requests))
            reads[-1]["load_average"] = os.getloadavg()[0]
        out |= medians(reads)
        out["bytes_per_turn_x_row"] = out["bytes_per_turn"] / out["row_json_per_turn"]
        if maintain:
            out |= maintenance(url, export.parent, built.events)
        writes = []
        for n in range(rounds):
            progress(f"{size}: appends, and on an empty schema, round {n + 1} of {rounds}")
            writes.append(await append_figures(url, appends))
        out |= medians(writes)
    return out


def measure(
    built: Built,
    export: Path,
    rounds: int,
    requests: int,
    appends: tuple[int, int, int],
    *,
    maintain: bool = True,
) -> dict[str, float]:
    """Figures of one log in PostgreSQL: bytes, reads, lists, ``as_of``, catch-up, the
    maintenance commands (unless not ``maintain``) and appends."""
    return asyncio.run(_measure(built, export, rounds, requests, appends, maintain=maintain))
