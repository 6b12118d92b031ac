"""Settings: one variable per setting, validated once, documented from the model itself."""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sessionstream.cli.config import REGENERATE, reference
from sessionstream.cli.main import main
from sessionstream.core.errors import ConfigError
from sessionstream.core.settings import Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
SECRET = "s" * 40
#: a valid value unlike the default, for settings a plain int/float/str sample cannot set
SAMPLES = {
    "database_url": "postgresql://app@db.internal:5432/sessions",
    "secret": SECRET,
    "engine": "openai",
    "openai_base_url": "http://127.0.0.1:11434/v1",
    "anthropic_base_url": "http://127.0.0.1:4000",
    "log_level": "DEBUG",
    # golang.org/x/mod/sumdb/note's documented example key
    "log_key": "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
}


def _sample(name: str) -> tuple[str, Any]:
    """A raw variable value and the value the setting must take from it."""
    if name in SAMPLES:
        return SAMPLES[name], SAMPLES[name]
    default = Settings.model_fields[name].get_default(call_default_factory=True)
    if isinstance(default, bool):  # before int: a bool is one
        return ("false", False) if default else ("true", True)
    if isinstance(default, int):
        return "7", 7
    if isinstance(default, float) or Settings.model_fields[name].annotation == float | None:
        return "0.25", 0.25
    return "value", "value"


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_is_read_from_its_variable_and_documented(name: str) -> None:
    var = env_name(name)
    raw, expected = _sample(name)
    assert getattr(Settings(node_id="n"), name) != expected, "pick a sample unlike the default"
    assert getattr(Settings.from_env({var: raw}), name) == expected
    assert f"`{var}`" in REFERENCE.read_text(), f"{var} is missing from {REFERENCE.name}"


@pytest.mark.parametrize(
    ("name", "var", "not_read"),
    [
        ("db_path", "SESSIONSTREAM_DB", "SESSIONSTREAM_DB_PATH"),
        ("openai_api_key", "OPENAI_API_KEY", "SESSIONSTREAM_OPENAI_API_KEY"),
        ("openai_base_url", "OPENAI_BASE_URL", "SESSIONSTREAM_OPENAI_BASE_URL"),
        ("anthropic_api_key", "ANTHROPIC_API_KEY", "SESSIONSTREAM_ANTHROPIC_API_KEY"),
        ("anthropic_base_url", "ANTHROPIC_BASE_URL", "SESSIONSTREAM_ANTHROPIC_BASE_URL"),
    ],
)
def test_names_off_the_prefix_rule_have_one_spelling(name: str, var: str, not_read: str) -> None:
    raw, expected = _sample(name)
    assert env_name(name) == var
    assert getattr(Settings.from_env({var: raw}), name) == expected
    assert getattr(Settings.from_env({not_read: raw}), name) != expected


def test_the_reference_is_generated_from_the_settings() -> None:
    assert REFERENCE.read_text() == reference(), (
        f"{REFERENCE.relative_to(ROOT)} differs from the settings; regenerate it: {REGENERATE}"
    )


def test_overrides_win_and_empty_values_keep_defaults() -> None:
    env = {"SESSIONSTREAM_PORT": "9000", "SESSIONSTREAM_ENGINE": "", "SESSIONSTREAM_HOST": " "}
    settings = Settings.from_env(env, port=9100, db_path=None)
    assert settings.port == 9100 and settings.engine == "offline"
    assert settings.db_path == "sessionstream.db" and settings.host == "127.0.0.1"
    assert Settings.from_env({"SESSIONSTREAM_RATE_BURST": " 7 "}).rate_burst == 7
    assert Settings.from_env({"SESSIONSTREAM_LOG_LEVEL": "warning"}).log_level == "WARNING"


def test_a_settings_built_in_code_ignores_the_environment(monkeypatch: Any) -> None:
    monkeypatch.setenv("SESSIONSTREAM_PORT", "9000")
    assert Settings().port == 8080
    assert Settings.from_env().port == 9000


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SESSIONSTREAM_PORT": "abc"}, "SESSIONSTREAM_PORT='abc' is not a valid integer"),
        (
            {"SESSIONSTREAM_RATE_LIMIT": "fast"},
            "SESSIONSTREAM_RATE_LIMIT='fast' is not a valid number",
        ),
        ({"SESSIONSTREAM_PORT": "70000"}, "SESSIONSTREAM_PORT='70000' must be at most 65535"),
        ({"SESSIONSTREAM_MAX_LEADS": "0"}, "SESSIONSTREAM_MAX_LEADS='0' must be at least 1"),
        (
            {"SESSIONSTREAM_LEASE_TTL_S": "nan"},
            "SESSIONSTREAM_LEASE_TTL_S='nan' must be a finite number",
        ),
        (
            {"SESSIONSTREAM_ENGINE": "gpt"},
            "SESSIONSTREAM_ENGINE='gpt' must be 'offline', 'openai' or 'anthropic'",
        ),
        (
            {"SESSIONSTREAM_DATABASE_URL": "mysql://db/x"},
            "SESSIONSTREAM_DATABASE_URL='mysql://db/x' is not in the expected form",
        ),
        (
            {"SESSIONSTREAM_SECRET": "too-short-to-sign"},
            "SESSIONSTREAM_SECRET must be at least 32 characters (HS256",
        ),
    ],
)
def test_a_bad_value_is_a_config_error_naming_its_variable(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.message.startswith(message)
    assert "too-short-to-sign" not in info.value.message  # a secret is never echoed


def test_every_problem_on_one_line_and_a_flag_named_as_a_flag() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SESSIONSTREAM_PORT": "abc", "SESSIONSTREAM_MAX_LEADS": "x"}, port="0")
    assert info.value.message == (
        "--port='0' must be at least 1; SESSIONSTREAM_MAX_LEADS='x' is not a valid integer"
    )
    with pytest.raises(ConfigError, match="nope is not a setting"):
        Settings(nope=1)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="SESSIONSTREAM_PORT=0 must be at least 1"):
        Settings(port=0)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1


def test_the_secret_is_generated_beside_a_single_nodes_db(tmp_path: Path) -> None:
    settings = Settings(db_path=str(tmp_path / "one" / "node.db"))
    secret = settings.resolved_secret()
    path = tmp_path / "one" / "node.db.secret"
    assert len(secret) >= 32 and path.read_text() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings.resolved_secret() == secret  # kept, not regenerated
    assert Settings(secret=SECRET).resolved_secret() == SECRET
    assert Settings(secret="s" * 32).resolved_secret() == "s" * 32  # the shortest accepted
    with pytest.raises(ConfigError, match="SESSIONSTREAM_SECRET must be at least 32"):
        Settings(secret="s" * 31)


def test_nodes_sharing_postgres_need_a_secret() -> None:
    shared = Settings(database_url="postgresql://app@db/x")
    with pytest.raises(ConfigError, match="SESSIONSTREAM_SECRET must be set when nodes share"):
        shared.resolved_secret()
    assert Settings(database_url="postgresql://app@db/x", secret=SECRET).resolved_secret()


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), "SESSIONSTREAM_SECRET": SECRET}
    return subprocess.run(
        [sys.executable, "-m", "sessionstream", *args],
        capture_output=True,
        text=True,
        env={**base, **env},
        cwd=cwd,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "args", "line"),
    [
        (
            {"SESSIONSTREAM_PORT": "abc"},
            [],
            "error: SESSIONSTREAM_PORT='abc' is not a valid integer",
        ),
        (
            {"SESSIONSTREAM_RATE_LIMIT": "fast"},
            [],
            "error: SESSIONSTREAM_RATE_LIMIT='fast' is not a valid number",
        ),
        (
            {"SESSIONSTREAM_SECRET": "short"},
            [],
            "error: SESSIONSTREAM_SECRET must be at least 32 characters (HS256 wants a key as "
            "long as its hash; try `openssl rand -base64 48`)",
        ),
        (
            {"SESSIONSTREAM_ENGINE": "gpt"},
            [],
            "error: SESSIONSTREAM_ENGINE='gpt' must be 'offline', 'openai' or 'anthropic'",
        ),
        ({}, ["--port", "0"], "error: --port='0' must be at least 1"),
        # found by library code after the settings loaded, reported the same way
        (
            {"SESSIONSTREAM_ENGINE": "openai"},
            [],
            "error: OPENAI_API_KEY is not set; set it, or set OPENAI_BASE_URL to a local server "
            "(any dummy key works there)",
        ),
        (
            {"SESSIONSTREAM_ENGINE": "anthropic"},
            [],
            "error: ANTHROPIC_API_KEY is not set; set it, or set ANTHROPIC_BASE_URL to a server "
            "that needs no key (a gateway that adds it, or a local fake)",
        ),
        (
            {
                "SESSIONSTREAM_SECRET": "",
                "SESSIONSTREAM_DATABASE_URL": "postgresql://127.0.0.1:1/x",
            },
            [],
            "error: SESSIONSTREAM_SECRET must be set when nodes share PostgreSQL (every node "
            "needs the same secret to verify run tokens)",
        ),
    ],
)
def test_serve_reports_a_config_error_in_one_line_and_exits_2(
    tmp_path: Path, env: dict[str, str], args: list[str], line: str
) -> None:
    done = _cli(["serve", "--db", str(tmp_path / "x.db"), *args], env, tmp_path)
    assert (done.returncode, done.stderr, done.stdout) == (2, line + "\n", "")
    assert not (tmp_path / "x.db").exists()  # refused before anything was opened


def test_the_config_command_shows_values_and_masks_secrets(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("SESSIONSTREAM_PORT", "9000")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-your-eyes")
    monkeypatch.setenv("SESSIONSTREAM_SECRET", SECRET)
    assert main(["config", "--db", str(tmp_path / "flag.db")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"SESSIONSTREAM_DB={tmp_path / 'flag.db'}" in out
    assert "SESSIONSTREAM_PORT=9000" in out and "SESSIONSTREAM_DATABASE_URL=" in out
    assert "OPENAI_API_KEY=(set)" in out and "SESSIONSTREAM_SECRET=(set)" in out
    assert "sk-not-for-your-eyes" not in str(out) and SECRET not in str(out)
    assert len(out) == len(Settings.model_fields)


def test_a_config_error_from_the_cli_in_process(capsys: Any) -> None:
    assert main(["config", "--log-level", "loud"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --log-level='LOUD' must be 'DEBUG', 'INFO'")
    assert err.count("\n") == 1


LIBRARY = ["core", "eventstore", "projections", "engines", "services", "server"]


def _exits(node: ast.AST) -> bool:
    """``SystemExit`` named, or ``sys.exit`` / ``os._exit`` reached for."""
    if isinstance(node, ast.Name):
        return node.id == "SystemExit"
    return (
        isinstance(node, ast.Attribute)
        and node.attr in ("exit", "_exit")
        and isinstance(node.value, ast.Name)
        and node.value.id in ("sys", "os")
    )


def test_no_system_exit_outside_the_cli() -> None:
    """Library code raises; only the entry points decide that the process ends."""
    files = [p for layer in LIBRARY for p in (ROOT / layer).rglob("*.py")]
    files.append(ROOT / "sessionstream" / "client.py")
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if _exits(node) and isinstance(node, ast.expr)
    ]
    assert len(files) > 20 and offenders == []
