"""Large texts stored deflated in SQLite (``eventstore/textcodec.py``), and the v4 docs move."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sessionstream import projections
from sessionstream.core.vocabulary import EventType
from sessionstream.eventstore.model import NewEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.sqlite.schema import SCHEMA_VERSION
from sessionstream.eventstore.textcodec import (
    META_MIN_BYTES,
    MIN_BYTES,
    decode,
    encode,
    size_sql,
    stored_size,
)
from sessionstream.eventstore.verify import verify_store

# stored JSON never holds a raw NUL (it is spelled \\u0000), and SQL's length() stops at one
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=3000)
CREATED = {"user_id": "u1", "campaign_id": "c", "node_id": "n"}


@given(TEXT)
def test_a_stored_text_reads_back_as_itself(text: str) -> None:
    assert decode(encode(text)) == text


@given(TEXT | st.text("ab\x01é", min_size=MIN_BYTES, max_size=20_000))
def test_a_budget_counts_the_texts_length_in_python_and_in_sql(text: str) -> None:
    stored = encode(text)
    assert stored_size(stored) == len(text)
    conn = sqlite3.connect(":memory:")
    assert conn.execute(f"SELECT {size_sql('?1')}", (stored,)).fetchone()[0] == len(text)
    conn.close()
    if len(text) < MIN_BYTES:
        assert stored == text


def test_prose_is_deflated() -> None:
    prose = "Hi %first_name%, as the VP of Sales at %company% you want faster results. " * 4
    stored = encode(prose)
    assert isinstance(stored, bytes) and len(stored) < len(prose) / 2
    assert isinstance(encode("x" * 100_000), bytes)


async def test_large_rows_are_stored_deflated_and_read_back_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    content = "Here's the framework for an intro email: subject, hook, value, call to action. " * 8
    sid = "session-s1"
    await store.append(
        sid,
        [
            NewEvent(
                EventType.SESSION_CREATED,
                {"id": "s1", **CREATED},
            )
        ],
    )
    events = [NewEvent(EventType.MESSAGE_APPENDED, {"role": "assistant", "content": content})]
    await store.append(sid, events, expected_version=1)
    before = await store.read_all(0)
    doc = await store.get_doc("session", "s1")
    await store.close()
    conn = sqlite3.connect(path)
    types = dict(conn.execute("SELECT type, typeof(data) FROM events").fetchall())
    body = conn.execute("SELECT typeof(body) FROM docs WHERE kind = 'session'").fetchone()
    conn.close()
    assert types == {"session.created": "text", "message.appended": "blob"}
    assert body == ("blob",)
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    try:
        assert await store.read_all(0) == before
        assert (await store.read_all(0))[1].data["content"] == content
        assert await store.get_doc("session", "s1") == doc
        assert not (await verify_store(store)).problems
    finally:
        await store.close()


async def test_a_version_4_files_documents_move_to_a_rowid_table(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    for n in range(3):
        await store.append(
            f"session-s{n}",
            [
                NewEvent(
                    EventType.SESSION_CREATED,
                    {"id": f"s{n}", **CREATED},
                )
            ],
        )
    docs = [await store.get_doc("session", f"s{n}") for n in range(3)]
    await store.close()
    conn = sqlite3.connect(path)
    columns = "kind, key, owner, parent, created_at, active, deleted, version, position, body"
    conn.executescript(
        "CREATE TABLE old_docs (kind TEXT NOT NULL, key TEXT NOT NULL, owner TEXT, "
        "parent TEXT, created_at TEXT, active INTEGER NOT NULL DEFAULT 0, deleted INTEGER "
        "NOT NULL DEFAULT 0, version INTEGER NOT NULL, position INTEGER NOT NULL, body TEXT "
        f"NOT NULL, PRIMARY KEY (kind, key)) WITHOUT ROWID; INSERT INTO old_docs SELECT {columns} "
        "FROM docs; DROP TABLE docs; ALTER TABLE old_docs RENAME TO docs; "
        "CREATE INDEX docs_listing ON docs (kind, owner, parent, created_at, key); "
        "PRAGMA user_version=4;"
    )
    conn.close()
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    try:
        assert [await store.get_doc("session", f"s{n}") for n in range(3)] == docs
        assert not (await verify_store(store)).problems
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    sql = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'docs'").fetchone()[0]
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")}
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    conn.close()
    assert "WITHOUT ROWID" not in sql.upper()
    assert {"docs_listing", "docs_active"} <= names
    assert version == SCHEMA_VERSION


async def test_a_live_runs_document_is_stored_plain_and_not_kept_once_it_ends(
    tmp_path: Path,
) -> None:
    """A live run's document is rewritten at every delta, so it is not deflated then;
    once the run ends its row goes (``DocIndex.kept``), and a read folds its stream."""
    path = tmp_path / "s.db"
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()

    def run_event(type_: str, **data: str) -> NewEvent:
        return NewEvent(type_, data, {"actor": {"type": "run", "id": "r1"}})

    created = run_event(
        EventType.RUN_CREATED, run_id="r1", kind="turn", session_id="s1", user_id="u1"
    )
    seq = (await store.append("run-r1", [created, run_event(EventType.RUN_STARTED)], 0)).version
    delta = run_event(EventType.MESSAGE_DELTA, text="Hi")
    seq = (await store.append("run-r1", [delta], seq)).version
    live = await store.get_doc("run", "r1")

    def stored() -> list[tuple[str, int]]:
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute("SELECT typeof(body), active FROM docs WHERE kind = 'run'")
            return [(str(kind), int(active)) for kind, active in rows]
        finally:
            conn.close()

    try:
        assert live is not None and live.body["status"] == "running"
        assert len(json.dumps(live.body)) >= MIN_BYTES  # large enough to deflate
        assert stored() == [("text", 1)]
        await store.append("run-r1", [run_event(EventType.RUN_COMPLETED)], seq)
        assert stored() == []
        done = await store.get_doc("run", "r1")
        assert done is not None and done.body["status"] == "completed"
    finally:
        await store.close()


async def test_a_runs_metadata_is_stored_deflated_and_a_short_one_as_it_is(
    tmp_path: Path,
) -> None:
    """A run's usual metadata (~120 bytes: its actor and session ids) is deflated; the
    ``{"actor": {"id": "b"}}`` of a small event is not worth compressing."""
    path = tmp_path / "s.db"
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    run_meta = {
        "actor": {"id": "run_01a248fc0a25751db13fc8be9b42774b", "type": "run"},
        "session_id": "01a248fc-0a20-7923-bd2c-e8a7fd535650",
    }
    short = {"actor": {"id": "b"}}
    await store.append("bench-1", [NewEvent("bench.appended", {"i": 1}, run_meta)])
    await store.append("bench-1", [NewEvent("bench.appended", {"i": 2}, short)], expected_version=1)
    before = await store.read_all(0)
    await store.close()
    conn = sqlite3.connect(path)
    stored = conn.execute("SELECT typeof(metadata), length(metadata) FROM events").fetchall()
    conn.close()
    assert len(json.dumps(run_meta, separators=(",", ":"))) >= META_MIN_BYTES
    assert stored[0][0] == "blob" and stored[0][1] < 100
    assert stored[1] == ("text", len(json.dumps(short, separators=(",", ":"))))
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    try:
        assert await store.read_all(0) == before
        assert [e.metadata for e in before] == [run_meta, short]
        assert not (await verify_store(store)).problems
    finally:
        await store.close()
