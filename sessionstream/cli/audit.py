"""The auditor's commands that need no trust in the server: checkpoint, verify-export.

``checkpoint`` records and prints a signed checkpoint (or the verifier key);
``verify-export`` checks an export against checkpoints with no server and no
database (``eventstore/audit.py``). ``export`` and ``import`` use the helpers
here to carry and check the same proofs. Exit codes as in ``maintenance``:
0 fine, 1 the check found a problem, 2 the command could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from sessionstream.cli.commands import command, described, missing_db, open_store
from sessionstream.core.errors import ConfigError, SessionStreamError
from sessionstream.core.settings import Settings
from sessionstream.eventstore.audit import audit_export, read_header
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.checkpoint import Signer, Verifier
from sessionstream.eventstore.tree import StoredCheckpoint
from sessionstream.services.proofs import load_signer, record_checkpoint


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "checkpoint",
        parents=[common],
        **described(
            "record a signed checkpoint of the log and print it",
            "0 with the checkpoint (or key) printed, 2 when there is no database "
            "or the log has no signing key",
        ),
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--public-key", action="store_true", help="print the verifier key (C2SP vkey) instead"
    )
    what.add_argument(
        "--new-key",
        metavar="NAME",
        help="print a new signing key named NAME (for SESSIONSTREAM_LOG_KEY) and exit",
    )
    p = sub.add_parser(
        "verify-export",
        **described(
            "check an export against a signed checkpoint (no server, no database)",
            "0 only when the export is consistent with the checkpoint, 1 when it is not, "
            "2 when a file cannot be read",
        ),
    )
    p.add_argument("file", help="a file written by 'sessionstream export'")
    p.add_argument("--checkpoint", required=True, help="a file holding a signed checkpoint")
    p.add_argument("--public-key", required=True, help="a file holding the log's verifier key")
    p.add_argument("--previous", help="an older checkpoint that must be a prefix of --checkpoint")


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


@command("checkpoint")
def checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    if args.new_key:
        print(Signer.generate(args.new_key).skey())
        return 0
    if missing := missing_db(settings):  # before a key is generated beside a typo
        return _fail(missing)
    signer = load_signer(settings)
    if args.public_key:
        print(signer.vkey())
        return 0

    async def work() -> StoredCheckpoint:
        store: EventStore = open_store(settings)
        async with store:
            return await record_checkpoint(store, signer)

    try:
        kept = asyncio.run(work())
    except SessionStreamError as exc:
        return _fail(exc.message)
    sys.stdout.write(kept.note)
    return 0


@command("verify-export")
def verify_export_(args: argparse.Namespace, settings: Settings) -> int:
    try:
        verifier = Verifier.from_vkey(Path(args.public_key).read_text())
        note = Path(args.checkpoint).read_text()
        previous = Path(args.previous).read_text() if args.previous else None
        with Path(args.file).open(encoding="utf-8") as lines:
            audit = audit_export(lines, verifier, note, previous)
    except (OSError, UnicodeDecodeError) as exc:
        return _fail(str(exc))
    except SessionStreamError as exc:
        return _fail(exc.message)
    for problem in audit.problems[:20]:
        print(f"FAIL {problem}")
    if audit.count:
        print(f"{args.file}: {audit.count} problem(s); the export is not the signed log")
        return 1
    print(f"OK {args.file}: {audit.events:,} events consistent with the checkpoint")
    return 0


def export_checkpoint(settings: Settings, store: EventStore) -> Any:
    """A checkpoint for an export to carry; None when this node has no signing key."""
    try:
        signer = load_signer(settings)
    except ConfigError:
        return None
    return record_checkpoint(store, signer)


def import_problems(path: Path, public_key: str | None) -> list[str]:
    """Why ``import`` should refuse this file (``--unverified`` imports it anyway)."""
    verifier = Verifier.from_vkey(Path(public_key).read_text()) if public_key else None
    with path.open(encoding="utf-8") as lines:
        note, _, _ = read_header(lines)
        if note is None:
            return ["it carries no signed checkpoint (made by an older sessionstream?)"]
    with path.open(encoding="utf-8") as lines:
        return audit_export(lines, verifier).problems
