"""The auditor's CLI against real SQLite files: verify, rebuild, replay, export, import.

Every command runs through ``sessionstream.cli.main``; tampering is done the
way an attacker with file access would, with ``sqlite3`` UPDATEs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

import tests.conftest as conf
from sessionstream import projections
from sessionstream.cli.main import main
from sessionstream.eventstore.model import Doc, RecordedEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.verify import doc_form
from sessionstream.projections.session import SessionProjection
from sessionstream.server.app import create_app
from sessionstream.server.keys import STORE
from sessionstream.services.accounts import create_user
from tests.sqlite_file import sql
from tests.test_history import RevisingEngine

S = "/api/campaigns/ai-chat-sessions"


# a realistic log, written through the real HTTP app -------------------------------------
async def _idle(client: TestClient[Any, Any], h: dict[str, str], sid: str) -> None:
    for _ in range(500):
        row = (await (await client.get(f"{S}/{sid}", headers=h)).json())["session"]
        if row["task_status"] is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("busy")


async def _compacted(store: Any) -> None:
    """Until the writer has taken every queued compaction: an append from now on is
    written after it, so which of a session's events are rows does not depend on timing
    (a session's turn is packed when the writer is idle, all but its last event)."""
    for _ in range(500):
        if not len(store.compactions):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("compaction never ran")


async def _populate(db: Path) -> dict[str, Any]:
    settings = conf.test_settings(db.parent, db_path=str(db))
    app = create_app(settings, engine=RevisingEngine(words=8))
    ids: dict[str, Any] = {}
    async with TestClient(TestServer(app)) as client:
        _, token = await create_user(app[STORE], "alice")
        h = {"Authorization": f"Bearer {token}"}

        async def session(campaign: str, node: str) -> str:
            r = await client.post(S, json={"campaign_id": campaign, "node_id": node}, headers=h)
            return str((await r.json())["session"]["id"])

        async def turn(sid: str, text: str) -> None:
            r = await client.post(f"{S}/{sid}/turn", json={"message": text}, headers=h)
            assert r.status == 200, await r.text()
            await _idle(client, h, sid)

        for name in ("a", "b"):
            r = await client.post("/api/campaigns", json={"name": name}, headers=h)
            cid = (await r.json())["campaign"]["id"]
            r = await client.post(f"/api/campaigns/{cid}/nodes", json={"name": "n"}, headers=h)
            ids[f"campaign_{name}"] = cid
            ids[f"node_{name}"] = (await r.json())["node"]["id"]
        a, na = ids["campaign_a"], ids["node_a"]
        main_sid = await session(a, na)
        for i in range(3):
            await turn(main_sid, f"brief {i}: write to CFOs about invoices")
        r = await client.patch(f"{S}/{main_sid}", json={"title": "CFO intro"}, headers=h)
        assert r.status == 200
        r = await client.post(
            f"{S}/{main_sid}/skeleton/rollback", json={"framework_version": 1}, headers=h
        )
        assert r.status == 200
        r = await client.post(f"{S}/{main_sid}/draft/rollback", json={"index": 0}, headers=h)
        assert r.status == 200
        r = await client.post(
            f"{S}/{main_sid}/generate-examples",
            json={"leads": [{"id": "L1", "first_name": "Ana"}, {"id": "L2", "first_name": "Bo"}]},
            headers=h,
        )
        assert r.status == 200, await r.text()
        await _idle(client, h, main_sid)
        # edits after the last turn stay rows (a session is packed as each turn ends), so
        # the tests below have rows of a session's stream to alter and remove
        await _compacted(app[STORE])
        r = await client.patch(f"{S}/{main_sid}", json={"draft_subject": "Invoices"}, headers=h)
        assert r.status == 200
        doomed = await session(a, na)
        await turn(doomed, "short one")
        assert (await client.delete(f"{S}/{doomed}", headers=h)).status == 200
        other = await session(ids["campaign_b"], ids["node_b"])
        await turn(other, "another campaign")
        await _compacted(app[STORE])
        for title in ("first title", "second title"):
            r = await client.patch(f"{S}/{other}", json={"title": title}, headers=h)
            assert r.status == 200
        ids.update(main=main_sid, doomed=doomed, other=other)
    return ids


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One populated database per module; tests copy it before changing anything."""
    db = tmp_path_factory.mktemp("golden") / "golden.db"
    ids = asyncio.run(_populate(db))
    return db, ids


#: event rows and the deltas packed beside them (eventstore/packing.py): the log's events
EVENT_COUNT = "SELECT (SELECT COUNT(*) FROM events) + (SELECT COALESCE(SUM(events), 0) FROM packs)"


def copy_db(golden: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    source = sqlite3.connect(golden[0])
    target = tmp_path / "work.db"
    dest = sqlite3.connect(target)
    source.backup(dest)
    source.close()
    dest.close()
    return target


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def _all_docs(db: Path) -> dict[tuple[str, str], str]:
    store = SQLiteEventStore(db, projections.ALL)
    async with store:
        found: dict[tuple[str, str], str] = {}
        for projection in projections.ALL:
            docs: list[Doc] = await store.list_docs(projection.kind, include_deleted=True)
            found.update({(d.kind, d.key): doc_form(d) for d in docs})
        return found


def all_docs(db: Path) -> dict[tuple[str, str], str]:
    return asyncio.run(_all_docs(db))


def all_events(db: Path) -> list[RecordedEvent]:
    """Every event of the log as a reader gets it (rows and packs merged): an import packs
    a session's turns together where the original packed them one at a time."""
    return asyncio.run(_all_events(db))


async def _all_events(db: Path) -> list[RecordedEvent]:
    store = SQLiteEventStore(db, projections.ALL)
    async with store:
        return await store.read_all(0, limit=1_000_000)


# verify --------------------------------------------------------------------------------
def test_verify_passes_and_counts(golden: Any, tmp_path: Path, capsys: Any) -> None:
    db = copy_db(golden, tmp_path)
    code, out, _ = cli(capsys, "verify", "--db", str(db))
    assert code == 0, out
    (events,) = sql(db, EVENT_COUNT)[0]
    (streams,) = sql(db, "SELECT COUNT(DISTINCT stream_id) FROM events")[0]  # a last row each
    (docs,) = sql(db, "SELECT COUNT(*) FROM docs")[0]
    assert f"verified {events:,} events in {streams:,} streams" in out
    assert f"{docs:,} read-model rows" in out and "OK" in out
    code, out, _ = cli(capsys, "verify", "--db", str(db), "--json")
    report = json.loads(out)
    assert report["ok"] and report["events"] == events and report["docs"] == docs


def test_verify_names_an_altered_event(golden: Any, tmp_path: Path, capsys: Any) -> None:
    db = copy_db(golden, tmp_path)
    sid = golden[1]["main"]
    ((position, version),) = sql(
        db,
        "SELECT position, version FROM events WHERE stream_id = ? AND type = 'session.patched'",
        f"session-{sid}",
    )
    sql(
        db,
        "UPDATE events SET data = json_set(stored_text(data), '$.fields.title', 'forged') "
        "WHERE position = ?",
        position,
    )
    code, out, _ = cli(capsys, "verify", "--db", str(db))
    assert code == 1
    first = out.split("the first:")[1].splitlines()[1]
    assert f"position {position}" in first
    assert f"session-{sid}" in first and f"version {version}" in first and "(hash)" in first
    # only that event is named among the events: later links check against stored hashes
    code, out, _ = cli(capsys, "verify", "--db", str(db), "--json")
    report = json.loads(out)
    bad_events = [p for p in report["problems"] if p["position"] is not None]
    assert [(p["position"], p["kind"]) for p in bad_events] == [(position, "hash")]
    # the session row was folded from the original event, so it no longer matches either
    assert any(p["doc_key"] == sid and p["kind"] == "row" for p in report["problems"])


def test_verify_names_a_removed_event(golden: Any, tmp_path: Path, capsys: Any) -> None:
    db = copy_db(golden, tmp_path)
    sid = golden[1]["other"]
    rows = sql(
        db,
        "SELECT position, version FROM events WHERE stream_id = ? ORDER BY version",
        f"session-{sid}",
    )
    position = rows[1][0]
    sql(db, "DELETE FROM events WHERE position = ?", position)
    code, out, _ = cli(capsys, "verify", "--db", str(db), "--json")
    assert code == 1
    first = json.loads(out)["problems"][0]
    assert first["kind"] == "gap" and first["position"] == position + 1
    kinds = {(p["kind"], p["stream_id"]) for p in json.loads(out)["problems"]}
    assert ("version", f"session-{sid}") in kinds


def test_verify_names_an_altered_row(golden: Any, tmp_path: Path, capsys: Any) -> None:
    db = copy_db(golden, tmp_path)
    sid = golden[1]["main"]
    sql(
        db,
        "UPDATE docs SET body = json_set(stored_text(body), '$.row.title', 'forged') "
        "WHERE kind = 'session' AND key = ?",
        sid,
    )
    code, out, _ = cli(capsys, "verify", "--db", str(db))
    assert code == 1
    assert f"bad row: session {sid} (row)" in out
    assert "title" in out
    # a stored row the log does not imply, and a missing one, are named as such
    sql(
        db,
        "UPDATE docs SET body = json_set(stored_text(body), '$.row.title', 'CFO intro') "
        "WHERE kind = 'session' AND key = ?",
        sid,
    )
    sql(
        db,
        "DELETE FROM docs WHERE kind = 'campaign' AND key = (SELECT MIN(key) FROM docs "
        "WHERE kind = 'campaign')",
    )
    code, out, _ = cli(capsys, "verify", "--db", str(db), "--json")
    problems = json.loads(out)["problems"]
    assert [p["kind"] for p in problems] == ["missing_row"], problems
    assert problems[0]["doc_kind"] == "campaign"


def test_verify_names_an_index_column_and_extra_rows(
    golden: Any, tmp_path: Path, capsys: Any
) -> None:
    db = copy_db(golden, tmp_path)
    sid = golden[1]["doomed"]
    sql(db, "UPDATE docs SET deleted = 0 WHERE kind = 'session' AND key = ?", sid)
    sql(
        db,
        "INSERT INTO docs (kind, key, owner, parent, created_at, active, deleted, version, "
        "position, body) VALUES ('campaign', 'ghost', NULL, NULL, NULL, 0, 0, 1, 1, '{}')",
    )
    code, out, _ = cli(capsys, "verify", "--db", str(db), "--json")
    assert code == 1
    problems = {(p["kind"], p["doc_kind"], p["doc_key"]) for p in json.loads(out)["problems"]}
    assert problems == {("row", "session", sid), ("extra_row", "campaign", "ghost")}


def test_missing_database_is_an_error_not_a_new_file(tmp_path: Path, capsys: Any) -> None:
    for command in (["verify"], ["rebuild"], ["replay", "x"], ["export"]):
        code, _, err = cli(capsys, *command, "--db", str(tmp_path / "nope.db"))
        assert code == 2 and "no database" in err
    assert not (tmp_path / "nope.db").exists()


# rebuild and projection versions -------------------------------------------------------------
def test_rebuild_restores_tampered_rows_identically(
    golden: Any, tmp_path: Path, capsys: Any
) -> None:
    db = copy_db(golden, tmp_path)
    before = all_docs(db)
    snapshots = sql(db, "SELECT stream_id, version, position, state FROM snapshots ORDER BY 1, 2")
    sql(db, "UPDATE docs SET body = '{\"row\": {}}' WHERE kind = 'session'")
    sql(db, "DELETE FROM docs WHERE kind = 'run'")
    code, out, _ = cli(capsys, "rebuild", "--db", str(db))
    assert code == 0
    (events,) = sql(db, EVENT_COUNT)[0]
    assert f"from {events:,} events" in out
    assert all_docs(db) == before
    after = sql(db, "SELECT stream_id, version, position, state FROM snapshots ORDER BY 1, 2")
    assert [r[:3] for r in after] == [r[:3] for r in snapshots]
    assert cli(capsys, "verify", "--db", str(db))[0] == 0


class SessionProjectionV2(SessionProjection):
    version = SessionProjection.version + 1


def test_changed_projection_version_rebuilds_at_start(golden: Any, tmp_path: Path) -> None:
    db = copy_db(golden, tmp_path)
    before = all_docs(db)
    sid = golden[1]["main"]
    sql(
        db,
        "UPDATE docs SET body = json_set(stored_text(body), '$.row.title', 'stale') "
        "WHERE kind = 'session' AND key = ?",
        sid,
    )

    async def reopen(projection_set: tuple[Any, ...]) -> str:
        store = SQLiteEventStore(db, projection_set)
        async with store:
            doc = await store.get_doc("session", sid)
            assert doc is not None
            return str(doc.body["row"]["title"])

    assert asyncio.run(reopen(projections.ALL)) == "stale"  # same versions: no rebuild
    bumped = (SessionProjectionV2(), *projections.ALL[1:])
    assert asyncio.run(reopen(bumped)) == "CFO intro"  # version changed: rebuilt at start
    assert sql(db, "SELECT value FROM meta WHERE key = 'projection:session'") == [
        (str(SessionProjectionV2.version),)
    ]
    assert all_docs(db) == before


# export / import ---------------------------------------------------------------------------
def test_export_import_verify_rebuild_roundtrip(golden: Any, tmp_path: Path, capsys: Any) -> None:
    db = copy_db(golden, tmp_path)
    dump = tmp_path / "log.ndjson"
    code, _, err = cli(capsys, "export", "--db", str(db), "--out", str(dump))
    assert code == 0
    (events,) = sql(db, EVENT_COUNT)[0]
    assert f"exported {events:,} events" in err
    assert len(dump.read_text().splitlines()) == events + 1  # the signed checkpoint first
    copy = tmp_path / "copy.db"
    code, out, _ = cli(capsys, "import", str(dump), "--db", str(copy))
    assert code == 0, out
    assert all_events(copy) == all_events(db)  # positions, ids, times, hashes: verbatim
    assert all_docs(copy) == all_docs(db)  # folded on import
    code, out, _ = cli(capsys, "verify", "--db", str(copy))
    assert code == 0, out
    digest = [line for line in out.splitlines() if line.startswith("log digest")]
    _, original, _ = cli(capsys, "verify", "--db", str(db))
    assert digest[0] in original
    assert cli(capsys, "rebuild", "--db", str(copy))[0] == 0
    assert all_docs(copy) == all_docs(db)
    # a second import into the now non-empty store is refused, nothing written
    code, _, err = cli(capsys, "import", str(dump), "--db", str(copy))
    assert code == 2 and "not empty" in err
    assert all_events(copy) == all_events(db)
    # export refuses to overwrite
    assert cli(capsys, "export", "--db", str(db), "--out", str(dump))[0] == 2


def test_scoped_exports(golden: Any, tmp_path: Path, capsys: Any) -> None:
    db = copy_db(golden, tmp_path)
    ids = golden[1]

    def exported(*scope: str) -> list[dict[str, Any]]:
        out = tmp_path / f"{'-'.join(scope) or 'all'}.ndjson"
        assert cli(capsys, "export", "--db", str(db), "--out", str(out), *scope)[0] == 0
        lines = out.read_text().splitlines()
        assert "checkpoint" in json.loads(lines[0])  # the signed checkpoint first
        return [json.loads(line) for line in lines[1:]]

    campaign = exported("--campaign", ids["campaign_a"])
    streams = {e["stream_id"] for e in campaign}
    assert f"campaign-{ids['campaign_a']}" in streams
    assert {f"session-{ids['main']}", f"session-{ids['doomed']}"} <= streams
    assert (
        f"session-{ids['other']}" not in streams and f"campaign-{ids['campaign_b']}" not in streams
    )
    runs = {s for s in streams if s.startswith("run-")}
    owners = {e["data"]["session_id"] for e in campaign if e["type"] == "run.created"}
    assert owners == {ids["main"], ids["doomed"]} and len(runs) == 5
    session = exported("--session", ids["other"])
    assert {e["stream_id"] for e in session} >= {f"session-{ids['other']}"}
    assert all(
        e["stream_id"] == f"session-{ids['other']}"
        or e["correlation_id"] == e["stream_id"]
        or e["correlation_id"] == f"session-{ids['other']}"
        for e in session
    )
    # a scoped export keeps original positions: imported, it verifies with --allow-gaps
    target = tmp_path / "scoped.db"
    path = tmp_path / f"--campaign-{ids['campaign_a']}.ndjson"
    code, out, _ = cli(capsys, "import", str(path), "--db", str(target))
    assert code == 0 and "--allow-gaps" in out
    assert cli(capsys, "verify", "--db", str(target))[0] == 1
    code, out, _ = cli(capsys, "verify", "--db", str(target), "--allow-gaps")
    assert code == 0, out
    original = all_docs(db)
    imported = all_docs(target)
    assert imported[("session", ids["main"])] == original[("session", ids["main"])]
    assert imported[("campaign", ids["campaign_a"])] == original[("campaign", ids["campaign_a"])]


def test_import_refuses_malformed_files_before_writing(tmp_path: Path, capsys: Any) -> None:
    good = {
        "position": 1,
        "stream_id": "user-x",
        "version": 1,
        "event_id": "e1",
        "type": "user.created",
        "data": {"id": "x", "name": "n"},
        "metadata": {},
        "correlation_id": None,
        "recorded_at": "2026-01-01T00:00:00.000Z",
        "hash": "0" * 64,
    }
    cases = {
        "not json": "{nope\n",
        "not an event": json.dumps({"position": 1}) + "\n",
        "out of order": "\n".join(
            json.dumps({**good, "position": p, "event_id": f"e{p}", "version": v})
            for p, v in ((2, 1), (1, 2))
        ),
        "version skips": "\n".join(
            json.dumps({**good, "position": p, "event_id": f"e{p}", "version": v})
            for p, v in ((1, 1), (2, 3))
        ),
        "id repeats": "\n".join(json.dumps({**good, "position": p, "version": p}) for p in (1, 2)),
    }
    for name, text in cases.items():
        source = tmp_path / "bad.ndjson"
        source.write_text(text)
        target = tmp_path / f"{name}.db"
        code, _, err = cli(capsys, "import", str(source), "--db", str(target))
        assert code == 2, name
        assert err.startswith("error:"), name
        assert not target.exists(), name


# replay ----------------------------------------------------------------------------------
def test_replay_prints_a_readable_timeline(golden: Any, tmp_path: Path, capsys: Any) -> None:
    db = copy_db(golden, tmp_path)
    sid = golden[1]["main"]
    code, out, _ = cli(capsys, "replay", sid, "--db", str(db))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"session {sid}:")
    assert any("session.created" in line and "user:" in line for line in lines)
    assert "  + user: brief 0: write to CFOs about invoices" in lines
    assert any(line.startswith("  + assistant: t1w0 t1w1") for line in lines)
    # skeleton revisions and the rollback as unified diffs of pretty JSON
    assert "  skeleton (framework_version 1 -> 2):" in lines
    assert '    -  "hook": "hook 1"' in lines and '    +  "hook": "hook 2"' in lines
    rolled = lines.index(next(line for line in lines if "skeleton.rolled_back" in line))
    assert lines[rolled + 1] == "  skeleton (framework_version 3 -> 4):"
    assert (
        '    -  "hook": "hook 3"' in lines[rolled:] and '    +  "hook": "hook 1"' in lines[rolled:]
    )
    assert "    +Subject: Subject 1 for %first_name%" in lines
    assert "  title: None -> 'CFO intro'" in lines
    assert any("run.claimed" in line for line in lines)
    assert any(line.startswith("  (") and "text deltas" in line for line in lines)
    assert not any("message.delta" in line for line in lines)  # folded into the count
    assert any("example.generated" in line for line in lines)
    code, out, _ = cli(capsys, "replay", sid, "--db", str(db), "--deltas")
    assert any("message.delta" in line for line in out.splitlines())
    code, out, err = cli(capsys, "replay", "00000000-0000-4000-8000-000000000000", "--db", str(db))
    assert code == 1 and "no session" in err


# the same commands on PostgreSQL ----------------------------------------------------------------
PG_DSN = os.environ.get(
    "SESSIONSTREAM_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


async def _pg(statement: str, *args: Any) -> Any:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN, timeout=3)
    try:
        return await conn.execute(statement, *args)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[tuple[str, str]]:
    """A database URL whose search_path is a throwaway schema, dropped afterwards."""
    pytest.importorskip("asyncpg")
    try:
        asyncio.run(_pg("SELECT 1"))
    except Exception as exc:  # unreachable, refused, no such database: skip
        if conf.ON_CI:
            pytest.fail(f"PostgreSQL is not reachable at {PG_DSN}: {exc}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_DSN}: {exc}")
    schema = f"t_maint_{uuid.uuid4().hex[:12]}"
    joiner = "&" if "?" in PG_DSN else "?"
    yield f"{PG_DSN}{joiner}search_path={schema}", schema
    asyncio.run(_pg(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


async def _pg_docs(url: str) -> dict[tuple[str, str], str]:
    from sessionstream.eventstore.postgres import PostgresEventStore

    store = PostgresEventStore(url, projections.ALL)
    async with store:
        found: dict[tuple[str, str], str] = {}
        for projection in projections.ALL:
            docs = await store.list_docs(projection.kind, include_deleted=True)
            found.update({(d.kind, d.key): doc_form(d) for d in docs})
        return found


@pytest.mark.postgres
def test_postgres_import_verify_rebuild_and_tamper(
    golden: Any, tmp_path: Path, capsys: Any, pg_url: tuple[str, str], monkeypatch: Any
) -> None:
    url, schema = pg_url
    db = copy_db(golden, tmp_path)
    dump = tmp_path / "log.ndjson"
    assert cli(capsys, "export", "--db", str(db), "--out", str(dump))[0] == 0
    code, out, err = cli(capsys, "import", str(dump), "--database-url", url)
    assert code == 0, err
    code, out, _ = cli(capsys, "verify", "--database-url", url)
    assert code == 0, out
    assert asyncio.run(_pg_docs(url)) == all_docs(db)
    assert cli(capsys, "rebuild", "--database-url", url)[0] == 0
    assert asyncio.run(_pg_docs(url)) == all_docs(db)
    again = tmp_path / "again.ndjson"
    # signed with the SQLite file's key, PostgreSQL's tree gives the very same checkpoint
    monkeypatch.setenv("SESSIONSTREAM_LOG_KEY", Path(f"{db}.logkey").read_text().strip())
    assert cli(capsys, "export", "--database-url", url, "--out", str(again))[0] == 0
    assert again.read_text() == dump.read_text()
    # tampering is named the same way on PostgreSQL
    sid = golden[1]["main"]
    line = next(  # the last: a row (the earlier ones were packed as later turns ended)
        json.loads(x)
        for x in reversed(dump.read_text().splitlines())
        if '"session.patched"' in x and sid in x
    )
    forged = json.dumps({"fields": {"title": "forged"}})
    asyncio.run(
        _pg(f'UPDATE "{schema}".events SET data = $1 WHERE position = $2', forged, line["position"])
    )
    code, out, _ = cli(capsys, "verify", "--database-url", url)
    assert code == 1
    assert f"bad event at position {line['position']}: stream session-{sid}" in out
