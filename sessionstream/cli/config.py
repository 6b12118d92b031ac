"""How the settings meet the user: CLI flags, ``sessionstream config`` and the reference.

Everything here is read off the ``Settings`` model (names, types, bounds, defaults,
descriptions), so ``docs/configuration.md`` and ``--help`` say what the code does.
A test compares the committed reference with ``reference()``.
"""

from __future__ import annotations

import argparse
import types
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, MinLen
from pydantic.fields import FieldInfo

from sessionstream.cli.commands import command, described
from sessionstream.core.settings import Settings, env_name, flag_name

#: settings every command takes as a flag, and those only ``serve`` takes
COMMON_FLAGS = ("db_path", "database_url", "log_level")
SERVE_FLAGS = ("host", "port", "engine")
#: the exit status of a configuration error, as argparse uses for bad usage
CONFIG_ERROR_EXIT = 2
REGENERATE = "sessionstream config --markdown > docs/configuration.md"


def add_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """One flag per setting, validated by the settings (not argparse), so a bad flag
    and a bad variable fail alike; ``args.<field name>`` is None when not given."""
    for name in names:
        flag = flag_name(name)
        assert flag is not None, f"{name} has no flag in core/settings.py"
        choices = _choices(Settings.model_fields[name])
        parser.add_argument(
            flag,
            dest=name,
            metavar="{" + ",".join(choices) + "}" if choices else name.split("_")[-1].upper(),
            help=f"sets {env_name(name)} (default {_default(Settings.model_fields[name], '')})",
        )


def _choices(field: FieldInfo) -> tuple[str, ...]:
    return get_args(field.annotation) if get_origin(field.annotation) is Literal else ()


def _kind(field: FieldInfo) -> str:
    """The type a user writes, with its bounds: ``integer, 1 to 65535``."""
    choices = _choices(field)
    if choices:
        quoted = [f"`{choice}`" for choice in choices]
        return " or ".join(quoted) if len(quoted) == 2 else "one of " + ", ".join(quoted)
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    text = "integer" if annotation is int else "number" if annotation is float else "string"
    low = next((m for m in field.metadata if isinstance(m, Ge | Gt)), None)
    high = next((m.le for m in field.metadata if isinstance(m, Le)), None)
    length = next((m.min_length for m in field.metadata if isinstance(m, MinLen)), 0)
    if isinstance(low, Ge) and high is not None:
        return f"{text}, {low.ge} to {high}"
    if isinstance(low, Ge):
        return f"{text} ≥ {low.ge}"
    if isinstance(low, Gt):
        return f"{text} > {low.gt}"
    return f"{text}, at least {length} characters" if length > 1 else text


def _default(field: FieldInfo, quote: str = "`") -> str:
    if field.default_factory is not None:
        return "generated"
    value = field.get_default()
    if value is None:
        return "unset"
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{quote}{shown}{quote}"


def reference() -> str:
    """``docs/configuration.md``: every setting, rendered from the model."""

    def flags(names: tuple[str, ...]) -> str:
        return ", ".join(f"`{flag_name(name)}`" for name in names)

    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from core/settings.py by `{REGENERATE}`;",
        "     edit the settings' descriptions there, not this file. -->",
        "",
        "Every setting is an environment variable, read once at start-up. A flag",
        "beside a variable overrides it: every command takes "
        f"{flags(COMMON_FLAGS)}, and `serve` also takes {flags(SERVE_FLAGS)}.",
        "",
        "- An empty variable counts as unset; whitespace around a value is ignored.",
        "- A value that cannot be used stops the command before it serves or changes",
        "  anything, with one line on stderr that names the variable (or the flag)",
        "  and exit status 2:",
        "  `error: SESSIONSTREAM_PORT='abc' is not a valid integer`.",
        "- `OPENAI_BASE_URL` and `OPENAI_API_KEY` are the OpenAI SDK's own names and",
        "  are read as they are, without the `SESSIONSTREAM_` prefix.",
        "- `sessionstream config` prints the values a command would use here,",
        "  with secrets masked.",
        "",
        "| Variable | Type | Default | Description |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        flag = flag_name(name)
        variable = f"`{env_name(name)}`" + (f" (`{flag}`)" if flag else "")
        lines.append(f"| {variable} | {_kind(field)} | {_default(field)} | {field.description} |")
    return "\n".join(lines) + "\n"


def _shown(settings: Settings, name: str) -> str:
    value: Any = getattr(settings, name)
    if value is None:
        return ""
    if Settings.model_fields[name].repr is False:
        return "(set)"  # a secret: say that it is there, never what it is
    return f"{value:g}" if isinstance(value, float) else str(value)


@command("config")
def config(args: argparse.Namespace, settings: Settings) -> int:
    """The settings in effect, one ``VARIABLE=value`` a line, or the reference."""
    if args.markdown:
        print(reference(), end="")
        return 0
    for name in Settings.model_fields:
        print(f"{env_name(name)}={_shown(settings, name)}")
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "config",
        parents=[common],
        **described(
            "print the settings in effect (secrets masked)", "0, 2 when a setting cannot be used"
        ),
    )
    p.add_argument(
        "--markdown",
        action="store_true",
        help=f"print the configuration reference instead ({REGENERATE})",
    )
