"""``export`` and ``import``: the log as NDJSON, to another store or an auditor.

The format and its rules live in ``eventstore/transfer.py``; here are the
file handling (a ``.partial`` file renamed into place once synced, never an
overwrite) and the checks an import makes before writing anything: the file's
own order and, unless ``--unverified``, its signed checkpoint
(``cli/audit.py``). Exit codes: 0 done, 1 a campaign or session the log does
not have, 2 the command could not run (no database, an existing ``--out``, a
file that is not an export, a target that is not empty).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from sessionstream.cli.audit import export_checkpoint, import_problems
from sessionstream.cli.commands import command, described
from sessionstream.cli.logstore import fail, missing_db, served, with_store
from sessionstream.core.errors import SessionStreamError
from sessionstream.core.settings import Settings
from sessionstream.core.vocabulary import campaign_stream, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.transfer import (
    campaign_scope,
    check,
    decode_lines,
    export,
    import_into,
    session_scope,
    whole_log,
)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export",
        parents=[common],
        **described(
            "write the log, one campaign or one session as NDJSON",
            "0, 1 for a campaign or session the log does not have, "
            "2 when there is no database or --out exists",
        ),
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--campaign", help="the campaign, its sessions and their runs")
    scope.add_argument("--session", help="the session and its runs")
    p.add_argument("--out", help="file to write (default: standard output)")
    p = sub.add_parser(
        "import",
        parents=[common],
        **described(
            "load an NDJSON export into an empty store and fold its read models",
            "0 once imported, 2 for a missing or malformed file, or a store that is not "
            "empty or that a server holds",
        ),
    )
    p.add_argument("file", help="a file written by 'sessionstream export'")
    p.add_argument("--public-key", help="also check the export's signature with this vkey file")
    p.add_argument(
        "--unverified",
        action="store_true",
        help="import even if the export fails 'verify-export' against its own checkpoint",
    )


def _private(path: Path) -> TextIO:
    """``path`` opened for writing, readable by its owner alone: an export is the log."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a partial file left by an earlier attempt keeps its old mode
    return os.fdopen(fd, "w", encoding="utf-8")


@command("export")
def export_(args: argparse.Namespace, settings: Settings) -> int:
    if missing := missing_db(settings):
        return fail(missing)
    target = Path(args.out) if args.out else None
    if target is not None and target.exists():
        return fail(f"{target} exists; refusing to overwrite it")

    async def work(store: EventStore) -> tuple[str, int] | str:
        if args.campaign:
            scope = await campaign_scope(store, args.campaign.lower())
            stream = campaign_stream(args.campaign.lower())
        elif args.session:
            scope = session_scope(args.session.lower())
            stream = session_stream(args.session.lower())
        else:
            scope, stream = whole_log(), None
        if stream is not None and await store.stream_version(stream) == 0:
            # an empty file and exit 0 read as "exported, it was empty": a typo went unseen
            return f"no {scope.name} in this log"
        pending = export_checkpoint(settings, store)
        signed = await pending if pending is not None else None
        if target is None:
            return scope.name, await export(store, scope, sys.stdout, signed)
        partial = target.with_name(target.name + ".partial")
        with _private(partial) as out:
            count = await export(store, scope, out, signed)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
        return scope.name, count

    done: tuple[str, int] | str = asyncio.run(with_store(settings, work))
    if isinstance(done, str):
        return fail(done, 1)
    name, count = done
    where = target or "standard output"
    print(f"exported {count:,} events of {name} to {where}", file=sys.stderr)
    return 0


def verify_command(settings: Settings, *, gaps: bool) -> str:
    """The verify command for the store just imported into, as the user can paste it:
    the installed script, the same store, and ``--allow-gaps`` for a scoped export
    (without it, verify rejects the positions a scoped export skips)."""
    if not settings.database_url:
        where = f"--db {shlex.quote(settings.db_path)}"
    elif os.environ.get("SESSIONSTREAM_DATABASE_URL") == settings.database_url:
        where = '--database-url "$SESSIONSTREAM_DATABASE_URL"'
    else:  # the URL may hold a password: name it, never print it
        where = "--database-url URL"
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0].endswith("sessionstream") else None
    program = shlex.quote(str(script)) if script is not None else ".venv/bin/sessionstream"
    return f"{program} verify {where}" + (" --allow-gaps" if gaps else "")


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        yield from handle


@command("import")
def import_(args: argparse.Namespace, settings: Settings) -> int:
    source = Path(args.file)
    if not source.is_file():
        return fail(f"no file {source}")
    if busy := served(settings, "importing into it"):
        return fail(busy)
    try:
        plan = check(lambda: decode_lines(_lines(source)))
    except (SessionStreamError, UnicodeDecodeError) as exc:
        return fail(f"{source}: {exc}")
    if not args.unverified:
        try:
            problems = import_problems(source, args.public_key)
        except (SessionStreamError, OSError) as exc:
            return fail(f"{source}: {exc}")
        if problems:
            for problem in problems[:20]:
                print(f"FAIL {problem}", file=sys.stderr)
            return fail(f"{source} fails verify-export; nothing imported (--unverified to force)")

    async def work(store: EventStore) -> int:
        return await import_into(store, decode_lines(_lines(source)))

    try:
        count: int = asyncio.run(with_store(settings, work, create=True))
    except SessionStreamError as exc:
        return fail(str(exc))
    out: TextIO = sys.stdout
    print(
        f"imported {count:,} events in {plan.streams:,} streams "
        f"(positions {plan.first:,}..{plan.last:,}); read models folded",
        file=out,
    )
    if plan.gaps:
        print(f"positions skip {plan.gaps} time(s): this was a scoped export", file=out)
    print(f"check it with: {verify_command(settings, gaps=bool(plan.gaps))}", file=out)
    return 0
