"""Chain hashes stored as 32-byte BLOBs in SQLite (``eventstore/hashcodec.py``), beside
the TEXT hashes an older build wrote."""

from __future__ import annotations

import hashlib
import io
import sqlite3
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sessionstream import projections
from sessionstream.core.vocabulary import EventType
from sessionstream.eventstore.hashcodec import decode_hash, encode_hash
from sessionstream.eventstore.model import GENESIS_HASH, NewEvent, RecordedEvent, recompute_hash
from sessionstream.eventstore.sqlite import SQLiteEventStore
from sessionstream.eventstore.sqlite.schema import SCHEMA_VERSION
from sessionstream.eventstore.transfer import decode_lines, export, import_into, whole_log
from sessionstream.eventstore.verify import verify_store
from tests.sqlite_file import sql

CREATED = {"user_id": "u1", "campaign_id": "c", "node_id": "n"}
#: how a version 5 file (an older build's) spells a hash the new build stored as bytes
AS_TEXT = "CASE WHEN typeof(hash) = 'blob' THEN lower(hex(hash)) ELSE hash END"


@given(st.text(max_size=80) | st.text("0123456789abcdefABCDEF \n", max_size=70))
def test_any_stored_text_reads_back_as_itself(text: str) -> None:
    assert decode_hash(encode_hash(text)) == text


@given(st.binary(min_size=32, max_size=32))
def test_a_hash_is_stored_as_its_32_bytes(digest: bytes) -> None:
    stored = encode_hash(digest.hex())
    assert isinstance(stored, bytearray) and bytes(stored) == digest
    assert decode_hash(stored) == digest.hex()


def test_the_genesis_hash_round_trips_and_a_capitalised_one_stays_text() -> None:
    assert encode_hash(GENESIS_HASH) == bytearray(32)
    assert decode_hash(bytes(32)) == GENESIS_HASH
    upper = hashlib.sha256(b"x").hexdigest().upper()
    assert encode_hash(upper) == upper  # bytes would read back in lowercase


async def fill(path: Path) -> SQLiteEventStore:
    """An open store with two sessions' events, the second stream a few versions long."""
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    for n in range(2):
        created = NewEvent(EventType.SESSION_CREATED, {"id": f"s{n}", **CREATED})
        await store.append(f"session-s{n}", [created])
    for title in ("one", "two", "three"):
        patched = NewEvent(EventType.SESSION_PATCHED, {"fields": {"title": title}})
        await store.append("session-s1", [patched])
    return store


def column_types(path: Path) -> set[tuple[str, int]]:
    """``(typeof(hash), length(hash))`` of the events' rows, as a raw connection sees them."""
    return set(sql(path, "SELECT typeof(hash), length(hash) FROM events"))


def tables(path: Path) -> set[str]:
    return {name for (name,) in sql(path, "SELECT name FROM sqlite_schema")}


async def exported(store: SQLiteEventStore) -> str:
    out = io.StringIO()
    await export(store, whole_log(), out)
    return out.getvalue()


async def test_a_new_file_stores_each_hash_as_32_bytes(tmp_path: Path) -> None:
    store = await fill(tmp_path / "s.db")
    events = await store.read_all(0)
    await store.close()
    assert column_types(tmp_path / "s.db") == {("blob", 32)}
    assert "streams" not in tables(tmp_path / "s.db")  # a head is its stream's last event
    assert all(len(e.hash) == 64 and e.hash == e.hash.lower() for e in events)
    # a writer that starts afresh reads a stream's head from its BLOB, and chains onto it
    store = SQLiteEventStore(tmp_path / "s.db", projections.ALL)
    await store.open()
    try:
        patched = NewEvent(EventType.SESSION_PATCHED, {"fields": {"title": "four"}})
        (event,) = (await store.append("session-s1", [patched], expected_version=4)).events
        assert event.hash == recompute_hash(events[-1].hash, event)
        assert (await store.read_all(0))[-1] == event
        assert not (await verify_store(store)).problems
    finally:
        await store.close()


async def test_an_older_builds_text_hashes_read_verify_and_take_appends(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await fill(path)
    before = await store.read_all(0)
    lines = await exported(store)
    await store.tree.integrate()
    root = await store.tree.root(len(before))
    await store.close()
    # as an older build wrote them: the events up to position 3 and each stream's last
    # as TEXT (the file then mixes both), a streams table of heads, and its version
    conn = sqlite3.connect(path)
    last = "SELECT MAX(position) FROM events GROUP BY stream_id"
    conn.execute(f"UPDATE events SET hash = {AS_TEXT} WHERE position <= 3 OR position IN ({last})")
    conn.execute(
        "CREATE TABLE streams (stream_id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
        "hash TEXT NOT NULL) WITHOUT ROWID"
    )
    conn.execute(
        "INSERT INTO streams SELECT stream_id, version, hash FROM events "
        f"WHERE position IN ({last})"
    )
    conn.execute("DELETE FROM merkle_nodes")  # rebuilt below from the events' hashes
    conn.execute("DELETE FROM meta WHERE key = 'merkle:size'")
    conn.execute("PRAGMA user_version=5")
    conn.commit()
    conn.close()
    assert column_types(path) == {("text", 64), ("blob", 32)}

    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    try:
        assert await store.read_all(0) == before
        assert await store.read_stream("session-s1") == [
            e for e in before if e.stream_id == "session-s1"
        ]
        assert not (await verify_store(store)).problems
        assert await exported(store) == lines
        await store.tree.integrate()
        assert await store.tree.root(len(before)) == root
        # each stream's next event chains onto the TEXT hash its last event holds
        for stream_id in ("session-s0", "session-s1"):
            head = [e for e in before if e.stream_id == stream_id][-1]
            patched = NewEvent(EventType.SESSION_PATCHED, {"fields": {"title": "next"}})
            (event,) = (
                await store.append(stream_id, [patched], expected_version=head.version)
            ).events
            assert event.hash == recompute_hash(head.hash, event)
        after = await store.read_all(0)
        assert after[: len(before)] == before
        assert not (await verify_store(store)).problems
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    appended = conn.execute("SELECT DISTINCT typeof(hash) FROM events WHERE position > ?", (6,))
    assert appended.fetchall() == [("blob",)]
    conn.close()
    assert version == SCHEMA_VERSION
    assert "streams" not in tables(path)  # dropped on open: schema 7 reads heads from events

    # an export of the mixed file imports into a new one as bytes, and reads the same
    copy = SQLiteEventStore(tmp_path / "copy.db", projections.ALL)
    await copy.open()
    try:
        await import_into(copy, decode_lines(io.StringIO(lines)))
        assert await copy.read_all(0) == before
        assert await exported(copy) == lines
    finally:
        await copy.close()
    assert column_types(tmp_path / "copy.db") == {("blob", 32)}


async def test_verify_catches_an_altered_hash_byte(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await fill(path)
    before = await store.read_all(0)
    await store.close()
    altered = next(e for e in before if e.stream_id == "session-s1" and e.version == 2)
    older = next(e for e in before if e.stream_id == "session-s0")
    conn = sqlite3.connect(path)
    (stored,) = conn.execute(
        "SELECT hash FROM events WHERE position = ?", (altered.position,)
    ).fetchone()
    assert isinstance(stored, bytes)
    flipped = stored[:5] + bytes([stored[5] ^ 0x01]) + stored[6:]
    conn.execute("UPDATE events SET hash = ? WHERE position = ?", (flipped, altered.position))
    # and one digit of a row an older build wrote as text
    text = older.hash[:-1] + ("0" if older.hash[-1] != "0" else "1")
    conn.execute("UPDATE events SET hash = ? WHERE position = ?", (text, older.position))
    conn.commit()
    conn.close()
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    try:
        read = {e.position: e for e in await store.read_all(0)}
        assert read[altered.position].hash == flipped.hex() != altered.hash
        assert read[older.position].hash == text
        report = await verify_store(store)
    finally:
        await store.close()
    after_altered = next(e for e in before if e.stream_id == "session-s1" and e.version == 3)
    # the altered event, and the one after it, whose link names the stored (altered) hash
    assert {(p.kind, p.position) for p in report.problems if p.position is not None} == {
        ("hash", altered.position),
        ("hash", after_altered.position),
        ("hash", older.position),
    }


async def test_an_imported_capitalised_hash_keeps_its_spelling(tmp_path: Path) -> None:
    """A hash that is not lowercase hex is stored as TEXT, so ``verify`` judges what the
    file held: as bytes it would read back in lowercase, and pass."""
    at = "2026-01-01T00:00:00.000Z"
    event = RecordedEvent(1, "s", 1, "e-1", "x", {}, {}, None, at, GENESIS_HASH)
    good = recompute_hash(GENESIS_HASH, event)
    shouted = RecordedEvent(1, "s", 1, "e-1", "x", {}, {}, None, at, good.upper())
    store = SQLiteEventStore(tmp_path / "s.db", projections.ALL)
    await store.open()
    try:
        await import_into(store, [shouted])
        assert [e.hash for e in await store.read_all(0)] == [good.upper()]
        report = await verify_store(store)
        assert [(p.kind, p.position) for p in report.problems] == [("hash", 1)]
    finally:
        await store.close()
