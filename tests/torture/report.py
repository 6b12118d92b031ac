"""Counts the proof suites print at the end of the run, whatever ``-s`` says.

A test calls :func:`report`; the lines appear in a "sessionstream proof"
section of pytest's terminal summary, so CI logs show how many kills were
survived or fuzz cases run even with output capture on.
"""

from __future__ import annotations

from typing import Any

import pytest

_KEY = pytest.StashKey[list[str]]()


class _Summary:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        lines = self.config.stash.get(_KEY, [])
        if lines:
            terminalreporter.section("sessionstream proof")
            for line in lines:
                terminalreporter.write_line(line)


def report(config: pytest.Config, line: str) -> None:
    if _KEY not in config.stash:
        config.stash[_KEY] = []
        config.pluginmanager.register(_Summary(config), "sessionstream-proof-summary")
    config.stash[_KEY].append(line)
