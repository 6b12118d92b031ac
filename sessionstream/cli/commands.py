"""The registry every subcommand joins, apart from the parser so the modules that
declare commands never import the entry point that runs them.

Exit statuses are one scheme for every command, so a script can tell "the answer
is no" from "the question could not be asked": 0 done (or healthy), 1 the command
ran and found a problem or no such thing, 2 it could not run (bad usage, a bad
setting, no database, a file it will not overwrite). ``docs/reference/cli.md`` is
rendered from the descriptions declared with :func:`described`.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sessionstream.core.errors import ConfigError
from sessionstream.core.settings import Settings

Command = Callable[[argparse.Namespace, Settings], int]
COMMANDS: dict[str, Command] = {}

#: the exit statuses, as ``--help`` and the CLI reference word them
EXIT_CODES = {
    0: "done (for `verify` and `doctor`: no problem found)",
    1: "the command ran and found a problem, or no such user, token, session or campaign",
    2: "it could not run: bad usage, a bad setting, no database, a file it will not overwrite",
}


#: where ``--help`` wraps the texts it does not wrap itself
WIDTH = 79


def exit_codes() -> str:
    """The scheme, for the top-level ``--help``."""
    lines = [f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items()]
    return "exit status (every command; docs/reference/cli.md has each one's):\n" + "\n".join(lines)


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


def described(summary: str, exits: str) -> dict[str, Any]:
    """``add_parser`` arguments: the one line the command list shows, and for the
    command's own ``--help`` that line and what it exits with."""
    return {
        "help": summary,
        "description": f"{summary[0].upper()}{summary[1:]}.\n\n"
        + textwrap.fill(f"Exits {exits}.", WIDTH),
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def missing_db(settings: Settings) -> str | None:
    """Why a command that reads a store cannot run on this SQLite path: it does not
    exist. Opening it would create an empty database, and a typo would be answered
    "healthy" or "no users" instead of "no such file"."""
    if settings.database_url or settings.db_path == ":memory:":
        return None
    if Path(settings.db_path).exists():
        return None
    return (
        f"no database at {settings.db_path} (pass --db PATH or --database-url URL; "
        "`sessionstream serve` or `users create` makes a new one)"
    )


def open_store(settings: Settings, *, create: bool = False) -> Any:
    """The configured store, not yet open. Only commands that start a store
    (``serve``, ``users create``, ``import``) pass ``create``; for every other a
    missing SQLite file is a ConfigError: one line, exit 2."""
    from sessionstream.server.app import make_store

    if not create and (missing := missing_db(settings)):
        raise ConfigError(missing)
    return make_store(settings)
