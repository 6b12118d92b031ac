"""Opening the store a log command works on, shared by verify, rebuild, replay, export
and import: one wording for a database that is not there, and a store that is
always closed again, whatever the command's work raised."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from sessionstream.cli.commands import open_store
from sessionstream.core.settings import Settings
from sessionstream.eventstore.base import EventStore

T = TypeVar("T")


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def missing_db(settings: Settings, *, create: bool = False) -> str | None:
    """A SQLite path that does not exist is a typo, not a database to create (except import)."""
    if settings.database_url or create or settings.db_path == ":memory:":
        return None
    if not Path(settings.db_path).exists():
        return f"no database at {settings.db_path} (pass --db PATH or --database-url URL)"
    return None


async def with_store(settings: Settings, work: Callable[[EventStore], Awaitable[T]]) -> T:
    store: EventStore = open_store(settings)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()
