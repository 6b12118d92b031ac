"""The SQLite store's writer: one connection, one thread, one transaction per batch.

Everything here runs on the writer thread, one call per batch (one thread hop:
ARCHITECTURE.md measured ~32k events/s against ~24k/s when each statement
hops through aiosqlite). Under ``BEGIN IMMEDIATE`` a batch reads the log's
head and its streams' heads in two queries, has the batch planner
(``eventstore/batch.py``) decide every request, and writes with one
``executemany`` per table.

The planner runs ``optimistic``: event ids are not looked up before the
batch, since a retried id is rare and ``UNIQUE (event_id)`` refuses it
anyway. When the database refuses the batch's write (a retry, or a row the
plan could not foresee), the batch is rolled back and redone on the sure
path: every id looked up first, each caller's group written in its own
savepoint, so a group the database still refuses fails alone. No savepoint
guards the fast path: its sub-journal (a temp file) more than doubled the
cost of every batch's inserts. ``bench/append`` measures the whole.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from sessionstream.core.errors import StorageUnavailable, ValidationFailed
from sessionstream.eventstore.batch import (
    NO_HEAD,
    BatchPlan,
    BatchPlanner,
    Decision,
    StreamHead,
    Unknown,
    check_import,
    storable,
)
from sessionstream.eventstore.clock import EXCEPTIONS_OF_LOG, exceptions, stamp
from sessionstream.eventstore.groupcommit import Pending
from sessionstream.eventstore.model import (
    Doc,
    RecordedEvent,
    row_to_doc,
    utc_now,
)
from sessionstream.eventstore.projector import Projection, Refold, StreamFold, per_stream
from sessionstream.eventstore.sqlite import relayout
from sessionstream.eventstore.sqlite.cache import DocCache
from sessionstream.eventstore.sqlite.checkpointer import JOURNAL_SIZE_LIMIT
from sessionstream.eventstore.sqlite.packs import (
    backfill_times,
    compact,
    with_packs,
)
from sessionstream.eventstore.sqlite.schema import (
    DOC_COLUMNS,
    DOCS_FROM_V4,
    DOCS_TO_ROWID,
    DROP_STREAMS,
    DROP_UNREAD_NODES,
    HEAD_AND_CLOCK,
    INSERT_CLOCK_EXCEPTION,
    INSERT_EVENT,
    LAST_SNAPSHOT,
    SCHEMA,
    SCHEMA_VERSION,
    event_row,
    immediate,
    translate_sqlite_error,
    unsynced,
)
from sessionstream.eventstore.sqlite.writer_io import (
    REBUILD_PAGE,
    docs_without_rowid,
    log_page,
    read_stored_events,
    read_stream_heads,
    stream_page,
    write_rows,
)

log = logging.getLogger("sessionstream.eventstore")


#: stream heads the writer keeps between batches (``Known``); past this many it starts over
KNOWN_STREAMS = 4096


class Known(NamedTuple):
    """What the writer's last committed batch left: the log's head, its newest time and
    the heads of the streams it looked up or wrote (``NO_HEAD``: none yet).

    The next batch plans on them without reading them again while nothing else
    wrote in between: no other connection (``PRAGMA data_version``, which moves
    when another connection commits) and nothing else on this one (its
    ``total_changes``: compaction, re-layout, imports, the Merkle tree). A
    sequential append's two reads (the head and newest time, two to four
    seeks; the stream's head) became one pragma. Dropped whenever a batch fails,
    so a rollback never leaves a head that was not committed.
    """

    conn: sqlite3.Connection
    data_version: int
    changes: int
    head: int
    newest: str | None
    streams: dict[str, StreamHead]


class SQLiteWriter:
    """The one write connection and everything done on it (call only on the writer thread)."""

    def __init__(
        self,
        path: str,
        projections: Sequence[Projection],
        *,
        snapshot_every: int,
        busy_retries: int,
        cache_size: int,
    ) -> None:
        self.path = path
        self.projections = tuple(projections)
        self.snapshot_every = snapshot_every
        self.busy_retries = busy_retries
        #: the write connection (``tests/test_faults.py`` swaps it to inject faults)
        self.conn: sqlite3.Connection | None = None
        self._cache = DocCache(cache_size)
        #: what the last batch committed, for the next one to plan on (``Known``)
        self._known: Known | None = None
        #: told the documents a batch rewrites just before it commits (the store's read
        #: cache holds them: ``cache.py`` says why)
        self.before_commit: Callable[[list[tuple[str, str]]], None] | None = None

    def _connection(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StorageUnavailable("the event store is not open")
        return self.conn

    # lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc) from exc
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            # checkpoints run on their own thread (checkpointer.py), never inside an append
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageUnavailable(
                    f"{self.path} has schema version {version}, newer than this build's "
                    f"{SCHEMA_VERSION}; upgrade sessionstream"
                )
            if 0 < version < 5 and docs_without_rowid(conn):  # one transaction
                conn.executescript(f"BEGIN IMMEDIATE;{DOCS_TO_ROWID}{SCHEMA}{DOCS_FROM_V4}COMMIT;")
            conn.executescript(SCHEMA)
            if (
                0 < version < 2
            ):  # written before appends clamped their time: find where it fell back
                conn.executemany(INSERT_CLOCK_EXCEPTION, conn.execute(EXCEPTIONS_OF_LOG).fetchall())
            if version == 3:  # packs without their times: read them once
                backfill_times(conn)
            if 0 < version < 7:  # the heads are the streams' last events now
                conn.execute(DROP_STREAMS)
                conn.execute(DROP_UNREAD_NODES)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException as exc:
            conn.close()  # a file that is not a database, or not writable: nothing left open
            if isinstance(exc, sqlite3.Error):
                raise translate_sqlite_error(exc) from exc
            raise
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            try:  # fold the WAL into the file, so it is whole without its -wal
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                pass
            self.conn.close()
            self.conn = None

    def stale_projections(self) -> list[str]:
        """Kinds whose projection version differs from the one the read models were built by."""
        stored = dict(self._connection().execute("SELECT key, value FROM meta").fetchall())
        return [
            p.kind for p in self.projections if stored.get(f"projection:{p.kind}") != str(p.version)
        ]

    # appends -----------------------------------------------------------------------------
    def write_batch(self, batch: list[Pending]) -> BatchPlan:
        """Decide and commit one batch; a lock held elsewhere is waited for, a few times."""
        for attempt in range(self.busy_retries + 1):
            try:
                return self._write_batch_once(batch)
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if ("locked" in text or "busy" in text) and attempt < self.busy_retries:
                    log.warning("database busy, retrying batch (attempt %d)", attempt + 1)
                    continue
                raise translate_sqlite_error(exc) from exc
            except sqlite3.Error as exc:
                raise translate_sqlite_error(exc) from exc
        raise StorageUnavailable("the database stayed locked")  # pragma: no cover

    def _write_batch_once(self, batch: list[Pending]) -> BatchPlan:
        conn = self._connection()
        known, self._known = self._known, None  # kept again only once this batch commits
        at = utc_now()
        conn.execute("BEGIN IMMEDIATE")
        try:
            try:
                plan, known = self._write_planned(conn, batch, at, known)
            except (sqlite3.IntegrityError, ValueError):
                # the database knows what the plan did not: start over, the sure way
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                plan, known = self._write_each(conn, batch, at), None
            if self.before_commit is not None:
                self.before_commit([(doc.kind, doc.key) for doc in plan.docs])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._cache.put_all(plan.docs)
        if known is not None:
            self._known = known._replace(changes=conn.total_changes)
        return plan

    def _facts(self, conn: sqlite3.Connection, names: Iterable[str], known: Known | None) -> Known:
        """The head, newest time and these streams' heads, under the write lock: what the
        last batch left when nothing else wrote since (``Known``), else read."""
        data_version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if (
            known is not None
            and known.conn is conn
            and known.data_version == data_version
            and known.changes == conn.total_changes
            and len(known.streams) < KNOWN_STREAMS
        ):
            streams = known.streams
            missing = [n for n in names if n not in streams]
            head, newest = known.head, known.newest
        else:
            streams, missing = {}, list(names)
            head, newest = conn.execute(HEAD_AND_CLOCK).fetchone()
        if missing:
            found = read_stream_heads(conn, missing)
            for name in missing:
                streams[name] = found.get(name, NO_HEAD)
        return Known(conn, data_version, 0, head, newest, streams)

    def _planner(
        self,
        conn: sqlite3.Connection,
        batch: list[Pending],
        at: str,
        *,
        optimistic: bool,
        known: Known | None = None,
    ) -> tuple[BatchPlanner, Known]:
        """A planner on what the transaction sees (the write lock is held), and the facts
        it was given."""
        # text the database cannot take is not looked up: its request is refused alone
        names = {r.stream_id for p in batch for r in p.requests}
        facts = self._facts(conn, filter(storable, names), known)
        head, newest, streams = facts.head, facts.newest, facts.streams
        stored: dict[str, RecordedEvent] = {}
        if not optimistic:
            ids = {e.event_id for p in batch for r in p.requests for e in r.events}
            requests = [r for p in batch for r in p.requests]
            found = read_stored_events(conn, filter(storable, ids), requests)
            stored = {e.event_id: e for e in found}

        def last_snapshot(stream_id: str, kind: str) -> int:
            return int(conn.execute(LAST_SNAPSHOT, (stream_id, kind)).fetchone()[0])

        planner = BatchPlanner(
            head,
            streams,  # only read: ``facts`` learns the batch's heads once it is planned
            stored,
            at=stamp(at, newest),
            optimistic=optimistic,
            projections=self.projections,
            load_doc=self._load_doc,
            snapshot_every=self.snapshot_every,
            last_snapshot=last_snapshot,
        )
        return planner, facts

    @staticmethod
    def _decide(conn: sqlite3.Connection, planner: BatchPlanner, pending: Pending) -> Decision:
        while True:
            try:
                return planner.decide(pending.requests)
            except Unknown as unknown:  # only event ids: documents are read as folded
                found = read_stored_events(conn, unknown.ident, pending.requests)
                planner.learn(unknown.ident, found)

    def _write_planned(
        self, conn: sqlite3.Connection, batch: list[Pending], at: str, known: Known | None
    ) -> tuple[BatchPlan, Known]:
        """The fast path: decide the whole batch, then write it at once; returns the plan
        and the facts it leaves (valid once it commits)."""
        planner, facts = self._planner(conn, batch, at, optimistic=True, known=known)
        decide, accept = planner.decide, planner.accept
        for pending in batch:
            try:
                decision = decide(pending.requests)
            except Unknown:  # rare: a retry or a conflict (the hot loop stays one call)
                decision = self._decide(conn, planner, pending)
            accept(decision)
        plan = planner.plan()
        write_rows(conn, plan.records, plan.docs, plan.snapshots)
        if not plan.records:
            return plan, facts
        facts.streams.update(plan.streams)
        return plan, facts._replace(head=plan.head, newest=plan.records[-1].recorded_at)

    def _write_each(self, conn: sqlite3.Connection, batch: list[Pending], at: str) -> BatchPlan:
        """The sure path: ids looked up first; each group written in its own savepoint."""
        planner, _ = self._planner(conn, batch, at, optimistic=False)
        for pending in batch:
            decision = self._decide(conn, planner, pending)
            if not decision.refused and decision.records:
                conn.execute("SAVEPOINT request")
                try:
                    write_rows(conn, decision.records, decision.docs.values(), decision.snapshots)
                except (sqlite3.IntegrityError, ValueError) as exc:
                    conn.execute("ROLLBACK TO request")
                    decision = Decision(ValidationFailed(f"append rejected by the store: {exc}"))
                conn.execute("RELEASE request")
            planner.accept(decision)
        return planner.plan()

    def _load_doc(self, kind: str, key: str) -> Doc | None:
        cached = self._cache.get((kind, key))
        if cached is not None:
            return cached
        row = (
            self._connection()
            .execute(f"SELECT {DOC_COLUMNS} FROM docs WHERE kind = ? AND key = ?", (kind, key))
            .fetchone()
        )
        return row_to_doc(row) if row else None

    def compact(self, stream_ids: Sequence[str]) -> int:
        """Pack the deltas of runs that just ended (``eventstore/packing.py``).

        Its own transaction after the batch that ended them, without an fsync
        of its own (``synchronous=NORMAL``): the next append's commit makes it
        durable, and a compaction lost to a crash only leaves the deltas as rows.
        """
        with unsynced(self._connection()) as conn:
            return compact(conn, stream_ids)

    def relay(self, tail: bool, pending: frozenset[str]) -> int:
        """One step of re-laying the log behind compaction (``sqlite/relayout.py``)."""
        try:
            conn = self._connection()
            return relayout.step(conn, size=relayout.STEP, tail=tail, pending=pending)
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc) from exc

    # import and rebuild -----------------------------------------------------------------------
    def import_events(self, events: list[RecordedEvent]) -> None:
        """``EventStore.import_events`` in one transaction (the rules: ``check_import``)."""
        conn = self._connection()
        self._cache.clear()
        try:
            with immediate(conn):
                head, newest = conn.execute(HEAD_AND_CLOCK).fetchone()
                streams = read_stream_heads(
                    conn, {e.stream_id for e in events if storable(e.stream_id)}
                )
                check_import(events, head, streams)  # a stored id: UNIQUE refuses it
                conn.executemany(INSERT_CLOCK_EXCEPTION, exceptions(events, newest)[0])
                try:
                    conn.executemany(INSERT_EVENT, [event_row(e) for e in events])
                except sqlite3.IntegrityError as exc:
                    raise ValidationFailed(f"import rejected by the store: {exc}") from exc
                refold = Refold(
                    self.projections,
                    self.snapshot_every,
                    load=self._load_doc,
                    last_snapshot=lambda stream_id, kind: int(
                        conn.execute(LAST_SNAPSHOT, (stream_id, kind)).fetchone()[0]
                    ),
                )
                write_rows(conn, (), *refold.page(events))
        finally:
            self._cache.clear()

    def _rebuild_in_log_order(self, conn: sqlite3.Connection) -> None:
        across = [p for p in self.projections if not per_stream(p)]
        if not across:
            return
        refold = Refold(across, self.snapshot_every)
        after = 0
        while page := log_page(conn, after):
            write_rows(conn, (), (), refold.page(page)[1])
            after = page[-1].position
        write_rows(conn, (), refold.projector.documents, ())

    def rebuild(self) -> int:
        """Drop every document and snapshot and refold the log; returns the events folded."""
        conn = self._connection()
        self._cache.clear()
        with immediate(conn):
            conn.execute("DELETE FROM docs")
            conn.execute("DELETE FROM snapshots")
            # the projections keyed across streams (users' usage, tokens) are folded in a
            # second pass in log order, holding their documents, never their events
            fold = StreamFold(self.projections, self.snapshot_every, hold=False)
            count = 0
            mark: tuple[str, int] = ("", 0)
            while True:
                # a page may end mid-stream, so its bound is its last row; the empty page
                # at the end takes the packed deltas after the last stream's last row
                page = stream_page(conn, mark)
                events = with_packs(conn, page, mark, bool(page), REBUILD_PAGE)
                if not events:
                    break
                write_rows(conn, (), *fold.feed(events))
                count += len(events)
                mark = (events[-1].stream_id, events[-1].version)
            write_rows(conn, (), *fold.finish())
            self._rebuild_in_log_order(conn)
            conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(f"projection:{p.kind}", str(p.version)) for p in self.projections],
            )
        return count
