"""Operator commands: ``doctor`` (is this node healthy?) and ``backup`` (online copy)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from sessionstream.cli.commands import command, open_store
from sessionstream.core.settings import MIN_SECRET_CHARS, Settings

MIN_FREE_BYTES = 512 * 1024 * 1024


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("doctor", parents=[common], help="check configuration, database, disk, schema")
    p = sub.add_parser("backup", parents=[common], help="online backup of the SQLite file")
    p.add_argument("path", help="where to write the copy")


def _check_config(settings: Settings) -> list[tuple[str, str, str]]:
    checks: list[tuple[str, str, str]] = []
    try:
        if settings.engine == "offline":
            import sessionstream.engines.offline  # noqa: F401
        elif settings.engine == "openai":
            import openai  # noqa: F401
        else:
            raise ImportError(f"unknown engine {settings.engine!r}")
        checks.append(("ok", "engine", settings.engine))
    except ImportError as exc:
        checks.append(("fail", "engine", f"{settings.engine}: {exc}"))
    if settings.secret and len(settings.secret) < MIN_SECRET_CHARS:
        checks.append(
            ("fail", "secret", f"SESSIONSTREAM_SECRET is under {MIN_SECRET_CHARS} characters")
        )
    elif settings.secret:
        checks.append(("ok", "secret", "SESSIONSTREAM_SECRET is set"))
    elif settings.database_url:
        checks.append(("fail", "secret", "nodes sharing PostgreSQL need SESSIONSTREAM_SECRET"))
    else:
        secret_file = Path(f"{settings.db_path}.secret")
        state = "present" if secret_file.exists() else "generated on first start"
        checks.append(("ok", "secret", f"{secret_file} ({state})"))
    if settings.rate_limit <= 0:
        checks.append(("warn", "rate limit", "off (SESSIONSTREAM_RATE_LIMIT=0)"))
    return checks


async def _check_store(settings: Settings) -> list[tuple[str, str, str]]:
    checks: list[tuple[str, str, str]] = []
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
    return checks


def _check_disk(settings: Settings) -> tuple[str, str, str]:
    where = Path(settings.db_path).resolve().parent if not settings.database_url else Path.cwd()
    free = shutil.disk_usage(where).free
    level = "ok" if free >= MIN_FREE_BYTES else "fail"
    return (level, "disk", f"{free / 2**30:.1f} GiB free at {where}")


@command("doctor")
def doctor(args: argparse.Namespace, settings: Settings) -> int:
    checks = _check_config(settings)
    checks.append(_check_disk(settings))
    checks.extend(asyncio.run(_check_store(settings)))
    width = max(len(name) for _, name, _ in checks)
    for level, name, detail in checks:
        print(f"{level.upper():5} {name:<{width}}  {detail}")
    failed = [c for c in checks if c[0] == "fail"]
    print("healthy" if not failed else f"{len(failed)} problem(s)")
    return 1 if failed else 0


@command("backup")
def backup(args: argparse.Namespace, settings: Settings) -> int:
    if settings.database_url:
        print("PostgreSQL deployments back up with pg_dump / pg_basebackup")
        return 2
    target = Path(args.path)
    if target.exists():
        print(f"{target} exists; refusing to overwrite it")
        return 2
    source = sqlite3.connect(settings.db_path)
    dest = sqlite3.connect(target)
    try:
        # SQLite's online backup API: a consistent copy while the server keeps writing
        source.backup(dest, pages=1024)
        count = dest.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        dest.close()
        source.close()
    print(f"backed up {count} events to {target}")
    return 0
