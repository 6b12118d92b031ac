"""The PostgreSQL statements and codecs (the schema itself: ``migrations.py``).

Every text column uses the ``"C"`` collation so ordering and comparisons are
bytewise, exactly as in SQLite (``list_docs`` orders by ``created_at`` then
key; ``position_at`` compares RFC 3339 strings).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sessionstream.core.jsonenc import encoder
from sessionstream.eventstore.batch import StreamHead
from sessionstream.eventstore.model import Doc, RecordedEvent
from sessionstream.eventstore.postgres.migrations import LATEST as LATEST
from sessionstream.eventstore.postgres.migrations import MIGRATIONS as MIGRATIONS
from sessionstream.eventstore.postgres.migrations import channel_for as channel_for
from sessionstream.eventstore.postgres.migrations import migrate as migrate
from sessionstream.eventstore.postgres.migrations import quote_ident as quote_ident
from sessionstream.eventstore.snapshots import Snapshot

# statements ---------------------------------------------------------------------
# Tables are unqualified: every connection the store opens has its search_path
# set to the store's schema.

EVENT_COLUMNS = (
    "position, stream_id, version, event_id, type, data, metadata, correlation_id, "
    "recorded_at, hash"
)
DOC_COLUMNS = "kind, key, owner, parent, created_at, active, deleted, version, position, body"

#: everything a batch needs to decide its outcome, in one round trip and one snapshot
#: (so every fact is as of the head it returns), read without any lock
READ_BATCH_STATE = f"""
WITH ev AS (
    SELECT {EVENT_COLUMNS} FROM events WHERE event_id = ANY($1::text[])
), st AS (
    SELECT stream_id, version, hash FROM streams WHERE stream_id = ANY($2::text[])
), dk AS (
    SELECT {", ".join("d." + c.strip() for c in DOC_COLUMNS.split(","))}
    FROM docs d JOIN unnest($3::text[], $4::text[]) AS k(kind, key)
        ON d.kind = k.kind AND d.key = k.key
), sn AS (
    SELECT s.stream_id, s.kind, MAX(s.version) AS version
    FROM snapshots s JOIN unnest($5::text[], $6::text[]) AS k(stream_id, kind)
        ON s.stream_id = k.stream_id AND s.kind = k.kind
    GROUP BY s.stream_id, s.kind
), le AS (
    SELECT run_id, epoch FROM leases WHERE run_id = ANY($7::text[])
)
SELECT (SELECT head FROM log_head WHERE id = 1) AS head,
       (SELECT max(recorded_at) FROM events) AS newest,
       (SELECT array_agg(ev ORDER BY position) FROM ev) AS events,
       (SELECT array_agg(st) FROM st) AS streams,
       (SELECT array_agg(dk) FROM dk) AS docs,
       (SELECT array_agg(sn) FROM sn) AS snapshots,
       (SELECT array_agg(le) FROM le) AS leases
"""

_DOC_UPSERT = (
    "ON CONFLICT (kind, key) DO UPDATE SET owner = excluded.owner, "
    "parent = excluded.parent, created_at = excluded.created_at, "
    "active = excluded.active, deleted = excluded.deleted, "
    "version = excluded.version, position = excluded.position, body = excluded.body"
)
_DOC_ARRAYS = (
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], "
    "$6::bool[], $7::bool[], $8::int[], $9::bigint[], $10::text[]"
)
_SNAPSHOT_UPSERT = (
    "ON CONFLICT (stream_id, kind, version) DO UPDATE SET "
    "position = excluded.position, state = excluded.state"
)

#: every write of a batch, the head and the wake-up of other nodes: one round trip
WRITE_BATCH = f"""
WITH d AS (
    INSERT INTO docs ({DOC_COLUMNS}) SELECT * FROM unnest({_DOC_ARRAYS})
    {_DOC_UPSERT}
), e AS (
    INSERT INTO events ({EVENT_COLUMNS})
    SELECT * FROM unnest($11::bigint[], $12::text[], $13::int[], $14::text[], $15::text[],
                         $16::text[], $17::text[], $18::text[], $19::text[], $20::text[])
), s AS (
    INSERT INTO streams (stream_id, version, hash)
    SELECT * FROM unnest($21::text[], $22::int[], $23::text[])
    ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, hash = excluded.hash
), n AS (
    INSERT INTO snapshots (stream_id, kind, version, position, state)
    SELECT * FROM unnest($24::text[], $25::text[], $26::int[], $27::bigint[], $28::text[])
    {_SNAPSHOT_UPSERT}
), h AS (
    UPDATE log_head SET head = $29 WHERE id = 1
)
SELECT pg_notify($30, $29::text)
"""

#: :data:`WRITE_BATCH` in its own transaction, if the log's head is still ``$31``, no
#: other writer (``$32`` names this one) holds the reservation, and every fence
#: (``$33`` run ids, ``$34`` epochs) is its lease's current epoch: returns the head
#: found, whether another writer's reservation refused it, and the stale fences' epochs
#: (the batch was written only if the head is ``$31``, unreserved, and none is stale)
WRITE_BATCH_AT_HEAD = (
    "SELECT at_head, reserved, stale FROM write_batch_at_head("
    + ", ".join(f"${n}" for n in range(1, 35))
    + ")"
)

#: the next write is this writer's (``$1``) for ``$2`` seconds unless it writes first:
#: one statement, so the reservation, never a lock, is what a paused writer leaves
#: behind; returns the head, or no row while another writer's reservation runs
#: the head, and whether a commit here waits for a synchronous standby (not on a
#: standby, not without one named): what ``again.durable_head`` needs to know
HEAD_AND_SYNC = (
    "SELECT head, NOT pg_is_in_recovery() AND current_setting('synchronous_standby_names') "
    "<> '' FROM log_head WHERE id = 1"
)
#: a statement whose commit waits for the synchronous standby to hold everything this
#: host committed before it. A transaction id alone would not make it wait (PostgreSQL
#: waits only for a commit that wrote WAL); a row lock writes WAL and takes one. KEY
#: SHARE of a row nothing updates, deletes or locks for update blocks no one.
DURABLE = "SELECT 1 FROM schema_migrations WHERE version = 1 FOR KEY SHARE"
RESERVE_HEAD = """
UPDATE log_head SET reserved_by = $1, reserved_until = clock_timestamp() + make_interval(secs => $2)
WHERE id = 1 AND (reserved_by IS NULL OR reserved_by = $1 OR reserved_until <= clock_timestamp())
RETURNING head
"""

#: a reservation its writer had no use for, given back (one that lapsed is someone else's)
UNRESERVE_HEAD = (
    "UPDATE log_head SET reserved_by = NULL, reserved_until = NULL "
    "WHERE id = 1 AND reserved_by = $1"
)

#: the rows of documents the store does not keep (``DocIndex.kept``: a run that ended),
#: removed once the write that upserted their last version has committed
DELETE_DOCS = (
    "DELETE FROM docs d USING unnest($1::text[], $2::text[]) AS u(kind, key) "
    "WHERE d.kind = u.kind AND d.key = u.key"
)

#: rebuild writes documents and snapshots per page of the log
WRITE_DOCS = f"""
WITH d AS (
    INSERT INTO docs ({DOC_COLUMNS}) SELECT * FROM unnest({_DOC_ARRAYS})
    {_DOC_UPSERT}
)
INSERT INTO snapshots (stream_id, kind, version, position, state)
SELECT * FROM unnest($11::text[], $12::text[], $13::int[], $14::bigint[], $15::text[])
{_SNAPSHOT_UPSERT}
"""

INSERT_CLOCK_EXCEPTIONS = (
    "INSERT INTO clock_exceptions (position, recorded_at) "
    "SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT (position) DO NOTHING"
)
#: the last position recorded at or before a time: the index's seek, or a later exception
POSITION_AT = """
SELECT COALESCE(GREATEST(
    (SELECT position FROM events WHERE recorded_at <= $1
     ORDER BY recorded_at DESC, position DESC LIMIT 1),
    (SELECT max(position) FROM clock_exceptions WHERE recorded_at <= $1)
), 0)
"""

RECORD_META = (
    "INSERT INTO meta (key, value) SELECT * FROM unnest($1::text[], $2::text[]) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


# codecs: a batch's rows as the column arrays its statements ``unnest`` --------------------------


#: ASCII escapes: a lone surrogate in user text cannot break the encoding (built once:
#: ``core/jsonenc.py``)
dumps = encoder(separators=(",", ":"))


def doc_arrays(docs: Sequence[Doc]) -> list[list[Any]]:
    """Column arrays for an ``unnest`` upsert of documents ($1-$10)."""
    return [
        [d.kind for d in docs],
        [d.key for d in docs],
        [d.index.owner for d in docs],
        [d.index.parent for d in docs],
        [d.index.created_at for d in docs],
        [d.index.active for d in docs],
        [d.index.deleted for d in docs],
        [d.version for d in docs],
        [d.position for d in docs],
        [dumps(d.body) for d in docs],
    ]


def snapshot_arrays(snapshots: Sequence[Snapshot]) -> list[list[Any]]:
    return [
        [s.stream_id for s in snapshots],
        [s.kind for s in snapshots],
        [s.version for s in snapshots],
        [s.position for s in snapshots],
        [dumps(s.state) for s in snapshots],
    ]


def write_batch_args(
    records: Sequence[RecordedEvent],
    streams: Mapping[str, StreamHead],
    docs: Sequence[Doc],
    snapshots: Iterable[Snapshot],
    head: int,
    channel: str,
) -> list[Any]:
    """The parameters of :data:`WRITE_BATCH`, in order."""
    heads = sorted(streams.items())
    return [
        *doc_arrays(docs),
        [r.position for r in records],
        [r.stream_id for r in records],
        [r.version for r in records],
        [r.event_id for r in records],
        [r.type for r in records],
        # the canonical text the append hashed (valid UTF-8: the hash encoded it)
        [r.encoded[0] if r.encoded else dumps(r.data) for r in records],
        [r.encoded[1] if r.encoded else dumps(r.metadata) for r in records],
        [r.correlation_id for r in records],
        [r.recorded_at for r in records],
        [r.hash for r in records],
        [k for k, _ in heads],
        [v.version for _, v in heads],
        [v.hash for _, v in heads],
        *snapshot_arrays(list(snapshots)),
        head,
        channel,
    ]
