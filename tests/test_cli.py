"""The command line as a newcomer meets it: ``--help`` that says what a command does
and exits with, one exit-status scheme, errors that are one line, hints that run."""

from __future__ import annotations

import argparse
import shlex
import uuid
from pathlib import Path
from typing import Any

import pytest

from sessionstream.cli.commands import EXIT_CODES
from sessionstream.cli.main import build_parser, main
from sessionstream.cli.reference import REGENERATE, markdown

ROOT = Path(__file__).resolve().parent.parent


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    found: list[tuple[str, argparse.ArgumentParser]] = []

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append((f"{prefix}{name}", sub))
                    walk(f"{prefix}{name} ", sub)

    walk("", build_parser())
    return found


@pytest.mark.parametrize("name", [name for name, _ in _parsers()])
def test_every_command_help_says_what_it_does_and_exits_with(name: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as done:
        main([*name.split(), "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    usage, description = text.split("\n\n")[:2]
    assert usage.startswith(f"usage: sessionstream {name}")
    assert description.strip() and "\n" not in description.strip(), description
    assert "Exits 0" in text, text


def test_the_top_level_help_lists_the_exit_statuses(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for code, meaning in EXIT_CODES.items():
        assert f"{code}  {meaning}" in text


def test_the_cli_reference_is_generated_from_the_parser() -> None:
    committed = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    assert committed == markdown(), f"regenerate it: {REGENERATE}"
    for name, parser in _parsers():
        assert f"### `{name}`" in committed
        exits = " ".join((parser.description or "").partition("\n\n")[2].split())
        assert exits and exits in committed


def _run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_export_of_an_unknown_campaign_or_session_is_an_error(tmp_path: Path, capsys: Any) -> None:
    db = str(tmp_path / "x.db")
    assert _run(capsys, "users", "create", "me", "--db", db)[0] == 0
    for scope in ("--campaign", "--session"):
        unknown = str(uuid.uuid4())
        out_file = tmp_path / f"{scope[2:]}.ndjson"
        code, out, err = _run(capsys, "export", "--db", db, scope, unknown, "--out", str(out_file))
        assert code == 1, (out, err)
        assert err.count("\n") == 1 and unknown in err and err.startswith("error: no ")
        assert not out_file.exists() and not out_file.with_name(out_file.name + ".partial").exists()
    # the whole log of the same store still exports, and exits 0
    code, out, err = _run(capsys, "export", "--db", db)
    # the user and its token, after the line holding the signed checkpoint
    assert code == 0 and out.count("\n") == 3 and out.startswith('{"checkpoint"'), err


def test_the_import_hint_names_the_store_and_runs_as_printed(
    tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    db = tmp_path / "a b.db"  # a space: the hint must quote the path it prints
    assert _run(capsys, "users", "create", "me", "--db", str(db))[0] == 0
    dump = tmp_path / "log.ndjson"
    assert _run(capsys, "export", "--db", str(db), "--out", str(dump))[0] == 0
    copy = tmp_path / "copy of.db"
    code, out, _ = _run(capsys, "import", str(dump), "--db", str(copy))
    assert code == 0, out
    hint = out.splitlines()[-1].removeprefix("check it with: ")
    argv = shlex.split(hint)
    assert argv[0] == ".venv/bin/sessionstream" and "--db" in argv, hint
    assert "--allow-gaps" not in argv  # the whole log has no gaps
    assert _run(capsys, *argv[1:])[0] == 0
    monkeypatch.setenv("SESSIONSTREAM_DATABASE_URL", "postgresql://u:secret@db/x")
    from sessionstream.cli.transfer import verify_command
    from sessionstream.core.settings import Settings

    settings = Settings.from_env()
    shown = verify_command(settings, gaps=True)
    assert "secret" not in shown and '"$SESSIONSTREAM_DATABASE_URL"' in shown
    assert shown.endswith("--allow-gaps")


def test_backup_errors_are_one_line_on_stderr(tmp_path: Path, capsys: Any) -> None:
    missing = tmp_path / "missing.db"
    code, out, err = _run(capsys, "backup", str(tmp_path / "copy.db"), "--db", str(missing))
    assert code == 2 and out == "" and err.startswith("error: no database")
    assert not missing.exists()  # not created by trying


def test_backup_into_a_missing_directory_is_one_line(tmp_path: Path, capsys: Any) -> None:
    db = str(tmp_path / "x.db")
    assert _run(capsys, "users", "create", "me", "--db", db)[0] == 0
    code, _, err = _run(capsys, "backup", str(tmp_path / "nowhere" / "c.db"), "--db", db)
    assert code == 2 and err.startswith("error: no directory") and err.count("\n") == 1


def test_a_started_server_freezes_its_startup_heap_and_collects_young_objects_less_often() -> None:
    """What ``serve`` does once started (``settle_gc``): a later full collection skips
    everything that existed by then, and young collections wait for 20,000 objects."""
    import gc

    from sessionstream.server.app import GC_THRESHOLDS, settle_gc

    before = gc.get_threshold()
    kept = [[i] for i in range(1000)]  # containers alive at startup
    try:
        settle_gc()
        assert gc.get_threshold() == GC_THRESHOLDS != before
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
