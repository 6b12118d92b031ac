"""Operator commands: ``doctor`` (is this node healthy?) and ``backup`` (online copy).

``doctor`` asks a model provider one cheap question when the engine is not offline: a
provider that is down, a wrong URL, key or model is the likeliest first failure with a
real model, and a doctor that says "healthy" then is worse than none.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

from sessionstream.cli.commands import command, described, missing_db, open_store
from sessionstream.core.errors import ConfigError, EngineError
from sessionstream.core.secret import loose_mode, secret_problem
from sessionstream.core.settings import Settings
from sessionstream.eventstore.sqlite.files import create_private, holder

Check = tuple[str, str, str]  # level (ok, warn, fail), what, detail

MIN_FREE_BYTES = 512 * 1024 * 1024


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser(
        "doctor",
        parents=[common],
        **described(
            "check configuration, model provider, database, disk, schema",
            "0 when healthy, 1 when a check fails, 2 on a bad setting or when there is no database",
        ),
    )
    p = sub.add_parser(
        "backup",
        parents=[common],
        **described(
            "copy the SQLite file while the server keeps writing",
            "0, 2 on PostgreSQL, when there is no database or when PATH exists",
        ),
    )
    p.add_argument("path", help="where to write the copy")


async def _check_engine(settings: Settings) -> list[Check]:
    """The engine builds (its SDK is installed, its key set); a provider answers."""
    from sessionstream.engines.provider import ProviderEngine
    from sessionstream.server.app import make_engine

    try:
        engine = make_engine(settings)
    except ConfigError as exc:
        return [("fail", "engine", f"{settings.engine}: {exc.message}")]
    try:
        if not isinstance(engine, ProviderEngine):
            return [("ok", "engine", settings.engine)]
        checks: list[Check] = [("ok", "engine", f"{settings.engine} (model {settings.model})")]
        try:
            checks.append(("ok", "provider", await engine.check()))
        except EngineError as exc:
            checks.append(("fail", "provider", exc.message))
        return checks
    finally:
        await engine.aclose()


def _check_config(settings: Settings) -> list[Check]:
    """What settings validation cannot see: where the secret lives, a limit turned off."""
    checks: list[Check] = []
    if settings.secret:
        checks.append(("ok", "secret", "SESSIONSTREAM_SECRET is set"))
    else:
        try:
            secret_file = settings.secret_file()
        except ConfigError as exc:
            checks.append(("fail", "secret", exc.message))
        else:
            checks.append(_check_secret_file(secret_file))
    if settings.rate_limit <= 0:
        checks.append(("warn", "rate limit", "off (SESSIONSTREAM_RATE_LIMIT=0)"))
    return checks


def _check_secret_file(path: Path) -> Check:
    """A secret file the server would refuse, or that others may read, fails here first."""
    if not path.exists():
        return ("ok", "secret", f"{path} (generated on first start)")
    try:
        problem = secret_problem(path.read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError) as exc:
        return ("fail", "secret", f"cannot read {path}: {exc}")
    if problem is not None:
        return ("fail", "secret", problem)
    mode = loose_mode(path)
    if mode is not None:
        return ("warn", "secret", f"{path} has mode {mode}; other users can read it (chmod 600)")
    return ("ok", "secret", f"{path} (present)")


async def _check_store(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    store = open_store(settings)
    try:
        await store.open()
    except Exception as exc:  # the point of doctor is to report, not to crash
        return [("fail", "database", f"cannot open: {exc}")]
    try:
        head = await store.head_position()
        checks.append(("ok", "database", f"open; log head at position {head}"))
        active = await store.list_docs("run", active=True)
        level = "ok" if not active else "warn"
        checks.append((level, "runs", f"{len(active)} run(s) without a terminal event"))
    finally:
        await store.close()
    if not settings.database_url:
        conn = sqlite3.connect(settings.db_path)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            conn.close()
        from sessionstream.eventstore.sqlite.schema import SCHEMA_VERSION

        level = "ok" if version == SCHEMA_VERSION else "fail"
        checks.append((level, "schema", f"version {version} (this build: {SCHEMA_VERSION})"))
        checks.append(("ok" if mode == "wal" else "warn", "journal", mode))
        served_by = holder(settings.db_path)
        checks.append(("ok", "server", f"served by {served_by}" if served_by else "none running"))
        loose = loose_mode(Path(settings.db_path))
        if loose is not None:
            checks.append(
                (
                    "warn",
                    "files",
                    f"{settings.db_path} has mode {loose}; other users can "
                    "read its sessions and token hashes (chmod 600 it and its -wal, -shm)",
                )
            )
    return checks


def _check_disk(settings: Settings) -> Check:
    where = Path(settings.db_path).resolve().parent if not settings.database_url else Path.cwd()
    free = shutil.disk_usage(where).free
    level = "ok" if free >= MIN_FREE_BYTES else "fail"
    return (level, "disk", f"{free / 2**30:.1f} GiB free at {where}")


@command("doctor")
def doctor(args: argparse.Namespace, settings: Settings) -> int:
    if missing := missing_db(settings):
        return _fail(missing)
    for client in ("httpx", "httpx2"):  # the SDKs' HTTP clients log every probe at INFO
        logging.getLogger(client).setLevel(logging.WARNING)

    async def probe() -> tuple[list[Check], list[Check]]:
        return await _check_engine(settings), await _check_store(settings)

    engine, store = asyncio.run(probe())
    checks = [*engine, *_check_config(settings), _check_disk(settings), *store]
    width = max(len(name) for _, name, _ in checks)
    for level, name, detail in checks:
        print(f"{level.upper():5} {name:<{width}}  {detail}")
    failed = [c for c in checks if c[0] == "fail"]
    print("healthy" if not failed else f"{len(failed)} problem(s)")
    return 1 if failed else 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


@command("backup")
def backup(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database_url:
        return _fail("PostgreSQL deployments back up with pg_dump / pg_basebackup")
    if not Path(settings.db_path).is_file():
        # sqlite3.connect would create an empty file and fail on its missing table
        return _fail(f"no database at {settings.db_path} (pass --db PATH)")
    target = Path(args.path)
    if target.exists():
        return _fail(f"{target} exists; refusing to overwrite it")
    if not target.parent.is_dir():
        return _fail(f"no directory {target.parent} to write {target.name} into")
    create_private(target)  # a copy of the log is as private as the log
    source = sqlite3.connect(settings.db_path)
    dest = sqlite3.connect(target)
    try:
        # SQLite's online backup API: a consistent copy while the server keeps writing
        source.backup(dest, pages=1024)
        count = dest.execute(  # packed token deltas are events too (eventstore/packing.py)
            "SELECT (SELECT COUNT(*) FROM events) + (SELECT COALESCE(SUM(events), 0) FROM packs)"
        ).fetchone()[0]
    finally:
        dest.close()
        source.close()
    print(f"backed up {count} events to {target}")
    return 0
