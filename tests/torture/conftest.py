"""Options of the torture suite: how many kills, and with which seed.

``SESSIONSTREAM_TORTURE_KILLS=200`` (anywhere) or ``pytest tests/torture
--torture-long`` runs the long mode; ``SESSIONSTREAM_TORTURE_SEED`` replays
a run (the seed is printed in the summary).
"""

from __future__ import annotations

import os

import pytest

DEFAULT_KILLS = 22
LONG_KILLS = 200
DEFAULT_SEED = 20240917


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--torture-long",
        action="store_true",
        default=False,
        help=f"SIGKILL the server {LONG_KILLS} times instead of {DEFAULT_KILLS}",
    )


@pytest.fixture
def torture_kills(request: pytest.FixtureRequest) -> int:
    raw = os.environ.get("SESSIONSTREAM_TORTURE_KILLS", "").strip()
    if raw:
        return int(raw)
    try:
        long = bool(request.config.getoption("--torture-long"))
    except ValueError:  # option not registered: this conftest was not an initial one
        long = False
    return LONG_KILLS if long else DEFAULT_KILLS


@pytest.fixture
def torture_seed() -> int:
    return int(os.environ.get("SESSIONSTREAM_TORTURE_SEED", "") or DEFAULT_SEED)
