"""The bench PostgreSQL server and throwaway schemas on it, for ours and for ``eventsourcing``.

Every PostgreSQL comparison in ``bench/append`` makes a schema per sample
and drops it after, and hands the peer the same server through its own
datastore; one place says how.
"""

from __future__ import annotations

import os
import uuid
from typing import Any
from urllib.parse import urlparse

PG_DSN = os.environ.get(
    "SESSIONSTREAM_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def scratch_schema(kind: str) -> str:
    return f"bench_{kind}_{uuid.uuid4().hex[:10]}"


async def execute(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def eventsourcing_datastore(schema: str, pool_size: int) -> Any:
    """The peer's ``PostgresDatastore`` on ``PG_DSN``'s server, in ``schema`` (already made)."""
    from eventsourcing.postgres import PostgresDatastore

    url = urlparse(PG_DSN)
    return PostgresDatastore(
        dbname=url.path.lstrip("/") or "postgres",
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or "",
        pool_size=pool_size,
        max_overflow=0,
        schema=schema,
    )
