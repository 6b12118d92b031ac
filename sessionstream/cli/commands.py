"""The registry every subcommand joins, apart from the parser so the modules that
declare commands never import the entry point that runs them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sessionstream.core.settings import Settings

Command = Callable[[argparse.Namespace, Settings], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


def open_store(settings: Settings) -> Any:
    from sessionstream.server.app import make_store

    return make_store(settings)
