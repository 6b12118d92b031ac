"""Settings: every field is set by an environment variable the README documents."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from sessionstream.core.settings import Settings, env_name

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", [f.name for f in fields(Settings)])
def test_every_setting_is_read_from_its_env_var_and_documented(name: str) -> None:
    var = env_name(name)
    assert f"`{var}`" in README, f"{var} is missing from the README's configuration table"
    default = getattr(Settings(node_id="n"), name)
    raw = {int: "7", float: "0.25", str: "value"}.get(type(default), "value")
    assert getattr(Settings.from_env({var: raw}), name) == type(default or "")(raw)


def test_overrides_win_and_empty_values_keep_defaults() -> None:
    env = {"SESSIONSTREAM_PORT": "9000", "SESSIONSTREAM_ENGINE": ""}
    settings = Settings.from_env(env, port=9100, db_path=None)
    assert settings.port == 9100 and settings.engine == "offline"
    assert settings.db_path == "sessionstream.db"


def test_a_malformed_number_names_its_variable() -> None:
    with pytest.raises(SystemExit, match="SESSIONSTREAM_RATE_LIMIT"):
        Settings.from_env({"SESSIONSTREAM_RATE_LIMIT": "fast"})


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(SystemExit, match="at least 32 characters"):
        Settings(secret="too-short").resolved_secret()
    assert Settings(secret="s" * 32).resolved_secret() == "s" * 32
