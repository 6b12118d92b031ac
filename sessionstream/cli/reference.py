"""``docs/reference/cli.md``, rendered from the parser itself.

The one-line summary, the exit statuses and the options a reader sees there are
the strings ``--help`` prints, so the reference cannot describe a command the
parser no longer has. A test compares the committed file with :func:`markdown`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from sessionstream.cli.commands import EXIT_CODES
from sessionstream.cli.config import COMMON_FLAGS
from sessionstream.cli.main import build_parser
from sessionstream.core.settings import flag_name

REGENERATE = ".venv/bin/python -m sessionstream.cli.reference > docs/reference/cli.md"


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:  # argparse keeps its subcommands nowhere public
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _section(name: str, parser: argparse.ArgumentParser) -> list[str]:
    summary, _, exits = (parser.description or "").partition("\n\n")
    common = {flag_name(setting) for setting in COMMON_FLAGS}
    usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    lines = [f"### `{name}`", "", summary, "", " ".join(exits.split()), ""]
    lines += ["```text", usage, "```", ""]
    options = [
        action
        for action in parser._actions
        if action.help not in (None, argparse.SUPPRESS)
        and not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and not common & set(action.option_strings)
    ]
    for action in options:
        spelled = ", ".join(action.option_strings) or action.dest
        lines.append(f"- `{spelled}`: {action.help}")
    if options:
        lines.append("")
    for sub_name, sub_parser in _subcommands(parser):
        lines += _section(f"{name} {sub_name}", sub_parser)
    return lines


def markdown() -> str:
    parser = build_parser()
    common = ", ".join(f"`{flag_name(name)}`" for name in COMMON_FLAGS)
    lines = [
        "# Command line",
        "",
        f"<!-- Generated from sessionstream/cli by `{REGENERATE}`;",
        "     edit the commands' descriptions there, not this file. -->",
        "",
        "`make serve` installs the `sessionstream` command into the project's virtualenv,",
        "so from the repository it runs as `.venv/bin/sessionstream` (or `sessionstream`",
        "once `.venv/bin` is on your `PATH`, e.g. after `. .venv/bin/activate`):",
        "",
        "```sh",
        ".venv/bin/sessionstream --help",
        ".venv/bin/sessionstream verify --help",
        "```",
        "",
        f"Every command takes {common};",
        "`serve` also takes the server's flags. Each flag sets one variable of the",
        "[configuration](../configuration.md), and a value that cannot be used stops",
        "the command with one line on stderr and exit status 2.",
        "",
        "## Exit status",
        "",
        'One scheme for every command, so a script can tell "the answer is no" from',
        '"the question could not be asked". Errors are one line on stderr, starting',
        "`error:`.",
        "",
        "| Status | Meaning |",
        "|---|---|",
        *(f"| {code} | {meaning} |" for code, meaning in EXIT_CODES.items()),
        "",
        "## Commands",
        "",
    ]
    for name, sub_parser in _subcommands(parser):
        lines += _section(name, sub_parser)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(markdown(), end="")
