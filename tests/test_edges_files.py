"""Issue #15, the file and process edges: the secret file, one server per SQLite file,
commands that never create a store by typo, a port in use, ``:memory:``, a failed
open that lets the process exit, private files and DEBUG logs without SQL parameters."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionstream import projections
from sessionstream.cli.main import main
from sessionstream.core.errors import ConfigError, StorageUnavailable, StoreInUse
from sessionstream.core.secret import MIN_SECRET_CHARS
from sessionstream.core.settings import Settings
from sessionstream.eventstore.model import NewEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.sqlite.files import holder
from sessionstream.server.app import create_app
from sessionstream.server.keys import RUNS, STORE
from sessionstream.services.accounts import create_user, hash_token
from sessionstream.services.runs import RunManager
from tests.conftest import Api
from tests.scripted_engine import ScriptedEngine
from tests.serverproc import ServerProcess, base_env, free_port

S = "/api/campaigns/ai-chat-sessions"
ROOT = Path(__file__).resolve().parent.parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cli(*argv: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "sessionstream", *argv],
        capture_output=True,
        text=True,
        env=env or base_env(),
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The usual 022: whatever is created private is so on purpose, not by the umask."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# item 6: the secret file -----------------------------------------------------------
@pytest.mark.parametrize("text", ["", "abc", "x" * (MIN_SECRET_CHARS - 1)])
def test_a_short_or_empty_secret_file_refuses_to_start(tmp_path: Path, text: str) -> None:
    db = tmp_path / "node.db"
    Path(f"{db}.secret").write_text(text)
    settings = Settings(db_path=str(db))
    with pytest.raises(ConfigError) as refused:
        settings.resolved_secret()
    assert f"{db}.secret" in refused.value.message
    assert f"at least {MIN_SECRET_CHARS}" in refused.value.message
    with pytest.raises(ConfigError):
        create_app(settings)  # the server never starts on it


def test_serve_with_an_empty_secret_is_one_line_and_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    Path(f"{db}.secret").write_text("")
    env = base_env()
    env.pop("SESSIONSTREAM_SECRET")
    done = _cli("serve", "--db", str(db), "--port", str(free_port()), env=env, timeout=30)
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and "is empty" in done.stderr, done.stderr
    assert "sessionstream on http" not in done.stdout


def test_a_crash_while_writing_the_secret_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(db_path=str(tmp_path / "node.db"))

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise OSError("power cut")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fdopen", crash)
        with pytest.raises(OSError):
            settings.resolved_secret()
    assert not settings.secret_file().exists()  # not an empty file that every start trusts
    assert os.listdir(tmp_path) == []  # nor a temporary one left behind
    secret = settings.resolved_secret()
    assert len(secret) >= MIN_SECRET_CHARS and settings.resolved_secret() == secret


def test_the_generated_secret_and_log_key_are_private(tmp_path: Path, loose_umask: None) -> None:
    from sessionstream.services.proofs import load_signer

    settings = Settings(db_path=str(tmp_path / "node.db"))
    settings.resolved_secret()
    assert _mode(settings.secret_file()) == 0o600
    signer = load_signer(settings)
    assert _mode(settings.log_key_file()) == 0o600
    assert load_signer(settings).vkey() == signer.vkey()  # kept, not regenerated
    assert sorted(os.listdir(tmp_path)) == ["node.db.logkey", "node.db.secret"]


def test_doctor_fails_a_short_secret_and_warns_of_a_readable_one(
    tmp_path: Path, capsys: Any, loose_umask: None
) -> None:
    db = tmp_path / "node.db"
    assert main(["users", "create", "ops", "--db", str(db)]) == 0
    secret = Path(f"{db}.secret")
    secret.write_text("abc")
    capsys.readouterr()
    assert main(["doctor", "--db", str(db)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  secret" in out and "holds only 3 characters" in out, out
    secret.write_text("y" * 64)
    secret.chmod(0o644)
    assert main(["doctor", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "WARN  secret" in out and "mode 0644" in out, out


# item 7: one server per SQLite file ------------------------------------------------
async def test_a_second_server_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "one.db")
    first = SQLiteEventStore(db, projections.ALL, exclusive=True)
    await first.open()
    try:
        second = SQLiteEventStore(db, projections.ALL, exclusive=True)
        with pytest.raises(StoreInUse) as refused:
            await second.open()
        assert f"pid {os.getpid()} on {socket.gethostname()}" in refused.value.message
        tool = SQLiteEventStore(db, projections.ALL)  # read-only commands take no lock
        async with tool:
            assert await tool.head_position() == 0
            assert not tool.owns_runs()
        assert first.owns_runs()
    finally:
        await first.close()
    after = SQLiteEventStore(db, projections.ALL, exclusive=True)
    async with after:
        assert after.owns_runs()  # a closed server's lock is free again


async def test_start_up_recovery_leaves_a_live_servers_runs_alone(make_api: Any) -> None:
    gate = asyncio.Event()
    api: Api = await make_api(engine=ScriptedEngine(gate=gate))
    session = await api.session()
    r = await api.client.post(f"{S}/{session['id']}/turn", json={"message": "x"}, headers=api.h())
    run_id = (await r.json())["runId"]
    served = api.app[STORE]
    assert isinstance(served, SQLiteEventStore)
    db = served.path
    other = SQLiteEventStore(db, projections.ALL)  # a second process on the same file
    async with other:
        recovered = await RunManager(other, ScriptedEngine()).recover_orphans()
        assert recovered == 0
        run = await other.get_doc("run", run_id)
        assert run is not None and run.body["status"] not in ("failed", "interrupted")
    gate.set()
    runs = api.app[RUNS]
    for _ in range(200):
        if not runs.is_local(run_id):
            break
        await asyncio.sleep(0.02)
    row = await served.get_doc("run", run_id)
    assert row is not None and row.body["status"] == "completed", row


def test_a_second_serve_exits_naming_the_first_and_readers_keep_working(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    store_args = ["--db", str(db)]
    with ServerProcess(store_args) as first:
        assert first.proc is not None
        done = _cli("serve", *store_args, "--port", str(free_port()), timeout=30)
        assert done.returncode == 2, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert f"pid {first.proc.pid}" in lines[0] and "already served" in lines[0]
        assert "sessionstream on http" not in done.stdout
        for argv in (["doctor"], ["verify"], ["users", "list"], ["export"]):
            ran = _cli(*argv, *store_args)
            assert ran.returncode == 0, (argv, ran.stderr)
        doctor = _cli("doctor", *store_args).stdout
        assert f"served by pid {first.proc.pid}" in doctor, doctor
        rebuilt = _cli("rebuild", *store_args)  # rewrites what the server serves: refused
        assert rebuilt.returncode == 2 and "stop that server" in rebuilt.stderr, rebuilt


# item 8: commands that read a store never create one ------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["doctor"],
        ["users", "list"],
        ["users", "token", "u1"],
        ["users", "revoke", "sst_x"],
        ["verify"],
        ["export"],
        ["replay", "s1"],
        ["rebuild"],
        ["checkpoint"],
        ["backup", "copy.db"],
    ],
)
def test_reading_commands_refuse_a_missing_database(
    tmp_path: Path, capsys: Any, argv: list[str]
) -> None:
    typo = tmp_path / "typo.db"
    code = main([*argv, "--db", str(typo)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"no database at {typo}" in err, err
    assert os.listdir(tmp_path) == [], "nothing created beside the typo"


def test_users_create_and_import_still_create_a_database(tmp_path: Path, capsys: Any) -> None:
    db = tmp_path / "new" / "made.db"
    assert main(["users", "create", "ada", "--db", str(db)]) == 0
    assert db.is_file()
    export = tmp_path / "all.ndjson"
    assert main(["export", "--db", str(db), "--out", str(export)]) == 0
    fresh = tmp_path / "fresh.db"
    assert main(["import", str(export), "--db", str(fresh)]) == 0
    assert fresh.is_file()


# item 9: a port in use ---------------------------------------------------------------
def test_a_port_in_use_is_one_line_and_no_listening_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli("serve", "--db", str(tmp_path / "p.db"), "--port", str(port), timeout=30)
    assert done.returncode == 2, done
    assert done.stderr == (
        f"error: port {port} is in use on 127.0.0.1; pass --port or set SESSIONSTREAM_PORT\n"
    )
    assert "sessionstream on http" not in done.stdout
    assert "Traceback" not in done.stderr


# item 10: ":memory:" -------------------------------------------------------------------
async def test_an_in_memory_store_works_and_leaves_nothing_behind() -> None:
    store = SQLiteEventStore(":memory:", projections.ALL)
    async with store:
        user_id, token = await create_user(store, "mem")
        assert await store.head_position() == 2
        assert (await store.get_doc("user", user_id)) is not None
        assert (await store.get_doc("token", hash_token(token))) is not None
        scratch = store._scratch
        assert scratch is not None and Path(scratch).is_dir()  # noqa: ASYNC240
    assert not Path(scratch).exists()  # noqa: ASYNC240


def test_an_in_memory_server_keeps_no_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings(db_path=":memory:").resolved_secret()
    assert "SESSIONSTREAM_SECRET" in refused.value.message
    assert Settings(db_path=":memory:", secret="m" * 40).resolved_secret() == "m" * 40


# item 11: a failed open lets the process exit ----------------------------------------
def _non_daemon_threads() -> list[threading.Thread]:
    """Threads that keep a process alive; the loop's own executor (``asyncio_N``) is not
    one, as ``asyncio.run`` shuts it down."""
    return [
        t
        for t in threading.enumerate()
        if not t.daemon and t is not threading.main_thread() and not t.name.startswith("asyncio_")
    ]


async def test_a_failed_open_closes_its_connections_and_threads(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not an SQLite database " * 200)
    before = set(_non_daemon_threads())
    store = SQLiteEventStore(str(corrupt), projections.ALL, exclusive=True)
    with pytest.raises(StorageUnavailable):
        await store.open()
    assert store._writer.conn is None
    assert set(_non_daemon_threads()) <= before
    assert holder(str(corrupt)) is None  # nor its lock


def test_serve_on_a_corrupt_database_is_one_line_and_exits(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not an SQLite database " * 200)
    done = _cli("serve", "--db", str(corrupt), "--port", str(free_port()), timeout=30)
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and "the database failed" in done.stderr, done.stderr
    assert "sessionstream on http" not in done.stdout


FAILING_READER = textwrap.dedent(
    """
    import asyncio, sys
    import aiosqlite
    from sessionstream import projections
    from sessionstream.eventstore.sqlite import SQLiteEventStore

    real = aiosqlite.connect
    calls = []

    def connect(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("the second reader cannot open")
        return real(*args, **kwargs)

    aiosqlite.connect = connect

    async def main():
        store = SQLiteEventStore(sys.argv[1], projections.ALL, readers=2)
        try:
            await store.open()
        except OSError as exc:
            print("open failed:", exc, flush=True)

    asyncio.run(main())
    """
)


def test_a_process_whose_open_failed_exits(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FAILING_READER, str(tmp_path / "r.db")],
        capture_output=True,
        text=True,
        timeout=30,  # before the fix a reader thread kept it alive for ever
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "open failed: the second reader cannot open" in done.stdout


# hardening: private files, DEBUG logs ------------------------------------------------
async def test_the_database_its_wal_shm_and_lock_are_private(
    tmp_path: Path, loose_umask: None
) -> None:
    db = tmp_path / "private.db"
    async with SQLiteEventStore(str(db), projections.ALL, exclusive=True) as store:
        await store.append("user-x", [NewEvent("user.created", {"id": "x", "name": "x"}, {})])
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}.lock")):
            assert path.exists() and _mode(path) == 0o600, (path, oct(_mode(path)))


def test_exports_and_backups_are_private(tmp_path: Path, capsys: Any, loose_umask: None) -> None:
    db = tmp_path / "x.db"
    assert main(["users", "create", "ops", "--db", str(db)]) == 0
    export = tmp_path / "x.ndjson"
    assert main(["export", "--db", str(db), "--out", str(export)]) == 0
    assert _mode(export) == 0o600
    backup = tmp_path / "copy.db"
    assert main(["backup", str(backup), "--db", str(db)]) == 0
    assert _mode(backup) == 0o600


async def test_debug_logs_carry_no_sql_parameters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = SQLiteEventStore(str(tmp_path / "d.db"), projections.ALL)
    async with store:
        _, token = await create_user(store, "dbg")
        digest = hash_token(token)
        store._reader.cache.clear()  # make the lookup a query, as a fresh process does
        assert await store.get_doc("token", digest) is not None
    assert digest not in caplog.text
    assert token not in caplog.text
