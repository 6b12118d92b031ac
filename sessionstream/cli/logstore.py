"""Opening the store a log command works on, shared by verify, rebuild, replay, export
and import: one wording for a database that is not there, and a store that is
always closed again, whatever the command's work raised."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sessionstream.cli import commands
from sessionstream.core.settings import Settings
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.sqlite.files import holder

T = TypeVar("T")


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def missing_db(settings: Settings) -> str | None:
    """A SQLite path that does not exist is a typo, not a database to create."""
    return commands.missing_db(settings)


def served(settings: Settings, what: str) -> str | None:
    """Why a command that rewrites the store must not run now: a server holds the
    SQLite file, and would go on serving the read models from its own caches."""
    if settings.database_url or settings.db_path == ":memory:":
        return None
    who = holder(settings.db_path)
    if who is None:
        return None
    return f"{settings.db_path} is served by {who}; stop that server before {what}"


async def with_store(
    settings: Settings, work: Callable[[EventStore], Awaitable[T]], *, create: bool = False
) -> T:
    """``create``: only ``import`` makes the store it works on."""
    store: EventStore = commands.open_store(settings, create=create)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()
