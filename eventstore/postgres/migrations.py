"""The PostgreSQL schema as numbered migrations, applied at ``open()``.

Several nodes may start at once against an empty database, so the whole
migration runs in one transaction under a transaction-scoped advisory lock
keyed by the schema name: the first node migrates, the others wait and then
find nothing left to do. Each migration is recorded in ``schema_migrations``;
a database migrated by a newer build is refused rather than written to.

Every text column uses the ``"C"`` collation so ordering and comparisons are
bytewise, exactly as in SQLite (``list_docs`` orders by ``created_at`` then
key; ``position_at`` compares RFC 3339 strings).
"""

from __future__ import annotations

from typing import Any

from sessionstream.core.errors import StorageUnavailable
from sessionstream.eventstore.clock import EXCEPTIONS_OF_LOG

#: arbitrary first key of the two-key advisory lock (the second is the schema's hash)
MIGRATION_LOCK = 0x5E55

#: the one statement that takes the head lock (``writer.py``): writes a batch only if the
#: head is still the one planned on, no other writer holds the reservation, and every
#: fence is its run's lease epoch; created by migration 8, re-created by 9
WRITE_BATCH_AT_HEAD_FN = """
    CREATE OR REPLACE FUNCTION write_batch_at_head(
        d_kind TEXT[], d_key TEXT[], d_owner TEXT[], d_parent TEXT[], d_created_at TEXT[],
        d_active BOOL[], d_deleted BOOL[], d_version INT[], d_position BIGINT[], d_body TEXT[],
        e_position BIGINT[], e_stream_id TEXT[], e_version INT[], e_event_id TEXT[],
        e_type TEXT[], e_data TEXT[], e_metadata TEXT[], e_correlation_id TEXT[],
        e_recorded_at TEXT[], e_hash TEXT[],
        s_stream_id TEXT[], s_version INT[], s_hash TEXT[],
        n_stream_id TEXT[], n_kind TEXT[], n_version INT[], n_position BIGINT[], n_state TEXT[],
        new_head BIGINT, channel TEXT, planned_head BIGINT,
        writer TEXT, f_run_id TEXT[], f_epoch BIGINT[],
        OUT at_head BIGINT, OUT reserved BOOLEAN, OUT stale BIGINT[]
    ) LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
    DECLARE
        r_holder TEXT;
        r_until TIMESTAMPTZ;
    BEGIN
        reserved := false;
        SELECT head, reserved_by, reserved_until INTO at_head, r_holder, r_until
        FROM log_head WHERE id = 1 FOR UPDATE;
        IF r_holder IS NOT NULL AND r_holder <> writer AND r_until > clock_timestamp() THEN
            reserved := true;  -- another writer's turn: nothing written
            RETURN;
        END IF;
        IF at_head <> planned_head THEN
            RETURN;  -- someone else wrote: the caller plans again on what it reads
        END IF;
        IF cardinality(f_run_id) > 0 THEN  -- most batches carry no fence: skip
            -- the fences' lease rows, share-locked: a takeover (which moves the epoch)
            -- waits for this commit, or this write sees its new epoch and writes nothing
            PERFORM 1 FROM leases l JOIN unnest(f_run_id, f_epoch) AS f(run_id, epoch)
                ON l.run_id = f.run_id FOR SHARE OF l;
            SELECT array_agg(DISTINCT f.epoch) INTO stale
            FROM unnest(f_run_id, f_epoch) AS f(run_id, epoch)
            WHERE NOT EXISTS (SELECT 1 FROM leases l
                              WHERE l.run_id = f.run_id AND l.epoch = f.epoch);
            IF stale IS NOT NULL THEN
                RETURN;  -- a run's lease moved on: its writer is fenced off, nothing written
            END IF;
        END IF;
        INSERT INTO docs (kind, key, owner, parent, created_at, active, deleted, version,
                          position, body)
        SELECT * FROM unnest(d_kind, d_key, d_owner, d_parent, d_created_at, d_active,
                             d_deleted, d_version, d_position, d_body)
        ON CONFLICT (kind, key) DO UPDATE SET owner = excluded.owner,
            parent = excluded.parent, created_at = excluded.created_at,
            active = excluded.active, deleted = excluded.deleted,
            version = excluded.version, position = excluded.position, body = excluded.body;
        INSERT INTO events (position, stream_id, version, event_id, type, data, metadata,
                            correlation_id, recorded_at, hash)
        SELECT * FROM unnest(e_position, e_stream_id, e_version, e_event_id, e_type, e_data,
                             e_metadata, e_correlation_id, e_recorded_at, e_hash);
        INSERT INTO streams (stream_id, version, hash)
        SELECT * FROM unnest(s_stream_id, s_version, s_hash)
        ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, hash = excluded.hash;
        INSERT INTO snapshots (stream_id, kind, version, position, state)
        SELECT * FROM unnest(n_stream_id, n_kind, n_version, n_position, n_state)
        ON CONFLICT (stream_id, kind, version) DO UPDATE SET
            position = excluded.position, state = excluded.state;
        UPDATE log_head SET head = new_head, reserved_by = NULL, reserved_until = NULL
        WHERE id = 1;
        PERFORM pg_notify(channel, new_head::text);
    END
    $fn$;
"""

MIGRATIONS: tuple[str, ...] = (
    # 1: the log, stream heads, read models, snapshots, meta, the position counter
    """
    CREATE TABLE events (
        position       BIGINT PRIMARY KEY,
        stream_id      TEXT COLLATE "C" NOT NULL,
        version        INTEGER NOT NULL,
        event_id       TEXT COLLATE "C" NOT NULL UNIQUE,
        type           TEXT COLLATE "C" NOT NULL,
        data           TEXT NOT NULL,
        metadata       TEXT NOT NULL,
        correlation_id TEXT COLLATE "C",
        recorded_at    TEXT COLLATE "C" NOT NULL,
        hash           TEXT COLLATE "C" NOT NULL,
        UNIQUE (stream_id, version)
    );
    CREATE INDEX events_correlation ON events (correlation_id, position)
        WHERE correlation_id IS NOT NULL;
    CREATE INDEX events_recorded_at ON events (recorded_at);
    CREATE TABLE streams (
        stream_id TEXT COLLATE "C" PRIMARY KEY,
        version   INTEGER NOT NULL,
        hash      TEXT COLLATE "C" NOT NULL
    );
    CREATE TABLE docs (
        kind       TEXT COLLATE "C" NOT NULL,
        key        TEXT COLLATE "C" NOT NULL,
        owner      TEXT COLLATE "C",
        parent     TEXT COLLATE "C",
        created_at TEXT COLLATE "C",
        active     BOOLEAN NOT NULL DEFAULT FALSE,
        deleted    BOOLEAN NOT NULL DEFAULT FALSE,
        version    INTEGER NOT NULL,
        position   BIGINT NOT NULL,
        body       TEXT NOT NULL,
        PRIMARY KEY (kind, key)
    );
    CREATE INDEX docs_listing ON docs (kind, owner, parent, created_at, key);
    CREATE INDEX docs_active ON docs (kind, active) WHERE active;
    CREATE TABLE snapshots (
        stream_id TEXT COLLATE "C" NOT NULL,
        kind      TEXT COLLATE "C" NOT NULL,
        version   INTEGER NOT NULL,
        position  BIGINT NOT NULL,
        state     TEXT NOT NULL,
        PRIMARY KEY (stream_id, kind, version)
    );
    CREATE TABLE meta (
        key   TEXT COLLATE "C" PRIMARY KEY,
        value TEXT NOT NULL
    );
    -- the one row every append transaction locks: positions are handed out
    -- under it, so they are gapless and in commit order across all nodes
    CREATE TABLE log_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        head BIGINT NOT NULL
    );
    INSERT INTO log_head (id, head) VALUES (1, 0);
    """,
    # 2: run ownership leases (multi-node recovery)
    """
    CREATE TABLE leases (
        run_id     TEXT COLLATE "C" PRIMARY KEY,
        node_id    TEXT COLLATE "C" NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX leases_node ON leases (node_id);
    """,
    # 3: the log's Merkle tree (eventstore/tree.py) and its signed checkpoints
    """
    CREATE TABLE merkle_nodes (
        level INTEGER NOT NULL,
        idx   BIGINT NOT NULL,
        hash  BYTEA NOT NULL,
        PRIMARY KEY (level, idx)
    );
    CREATE TABLE checkpoints (
        size        BIGINT PRIMARY KEY,
        root        BYTEA NOT NULL,
        note        TEXT NOT NULL,
        recorded_at TEXT NOT NULL
    );
    -- the row integration locks: one process at a time moves the tree's size
    INSERT INTO meta (key, value) VALUES ('merkle:size', '0') ON CONFLICT DO NOTHING;
    """,
    # 4: time as an index seek (eventstore/clock.py): the events written before appends
    # clamped their time whose time fell back, and the index ordered as the seek reads it
    f"""
    CREATE TABLE clock_exceptions (
        position    BIGINT PRIMARY KEY,
        recorded_at TEXT COLLATE "C" NOT NULL
    );
    INSERT INTO clock_exceptions (position, recorded_at) {EXCEPTIONS_OF_LOG};
    DROP INDEX events_recorded_at;
    CREATE INDEX events_recorded_at ON events (recorded_at, position);
    """,
    # 5: a batch planned on what the writer already knows, written in one statement
    # (its own transaction: one round trip) when the head is still the one it planned on
    """
    CREATE OR REPLACE FUNCTION write_batch_at_head(
        d_kind TEXT[], d_key TEXT[], d_owner TEXT[], d_parent TEXT[], d_created_at TEXT[],
        d_active BOOL[], d_deleted BOOL[], d_version INT[], d_position BIGINT[], d_body TEXT[],
        e_position BIGINT[], e_stream_id TEXT[], e_version INT[], e_event_id TEXT[],
        e_type TEXT[], e_data TEXT[], e_metadata TEXT[], e_correlation_id TEXT[],
        e_recorded_at TEXT[], e_hash TEXT[],
        s_stream_id TEXT[], s_version INT[], s_hash TEXT[],
        n_stream_id TEXT[], n_kind TEXT[], n_version INT[], n_position BIGINT[], n_state TEXT[],
        new_head BIGINT, channel TEXT, planned_head BIGINT
    ) RETURNS BIGINT LANGUAGE plpgsql SET enable_seqscan = off AS $fn$
    DECLARE
        current BIGINT;
    BEGIN
        SELECT head INTO current FROM log_head WHERE id = 1 FOR UPDATE;
        IF current <> planned_head THEN
            RETURN current;  -- someone else wrote: the caller plans again on what is read
        END IF;
        INSERT INTO docs (kind, key, owner, parent, created_at, active, deleted, version,
                          position, body)
        SELECT * FROM unnest(d_kind, d_key, d_owner, d_parent, d_created_at, d_active,
                             d_deleted, d_version, d_position, d_body)
        ON CONFLICT (kind, key) DO UPDATE SET owner = excluded.owner,
            parent = excluded.parent, created_at = excluded.created_at,
            active = excluded.active, deleted = excluded.deleted,
            version = excluded.version, position = excluded.position, body = excluded.body;
        INSERT INTO events (position, stream_id, version, event_id, type, data, metadata,
                            correlation_id, recorded_at, hash)
        SELECT * FROM unnest(e_position, e_stream_id, e_version, e_event_id, e_type, e_data,
                             e_metadata, e_correlation_id, e_recorded_at, e_hash);
        INSERT INTO streams (stream_id, version, hash)
        SELECT * FROM unnest(s_stream_id, s_version, s_hash)
        ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, hash = excluded.hash;
        INSERT INTO snapshots (stream_id, kind, version, position, state)
        SELECT * FROM unnest(n_stream_id, n_kind, n_version, n_position, n_state)
        ON CONFLICT (stream_id, kind, version) DO UPDATE SET
            position = excluded.position, state = excluded.state;
        UPDATE log_head SET head = new_head WHERE id = 1;
        PERFORM pg_notify(channel, new_head::text);
        RETURN current;
    END
    $fn$;
    """,
    # 6: a finished run's token deltas, compacted (eventstore/packing.py, postgres/packs.py)
    """
    CREATE TABLE packs (
        stream_id      TEXT COLLATE "C" NOT NULL,
        block          BIGINT NOT NULL,
        correlation_id TEXT COLLATE "C",
        first_position BIGINT NOT NULL,
        last_position  BIGINT NOT NULL,
        events         INTEGER NOT NULL,
        body           BYTEA NOT NULL,
        PRIMARY KEY (stream_id, block)
    );
    CREATE INDEX packs_block ON packs (block);
    CREATE INDEX packs_correlation ON packs (correlation_id, block)
        WHERE correlation_id IS NOT NULL;
    """,
    # 7: the packs' times: as_of=<time> reads only the packs the time cuts
    """
    ALTER TABLE packs ADD COLUMN first_at TEXT COLLATE "C", ADD COLUMN last_at TEXT COLLATE "C";
    """,
    # 8: no node holds the head lock across round trips (writer.py): a batch is planned on
    # facts read without the lock and written by one statement if the head has not moved;
    # a writer that keeps losing that race reserves the next write for a bounded time.
    # Every run write carries its lease's epoch (fencing, eventstore/leases.py).
    """
    ALTER TABLE log_head ADD COLUMN IF NOT EXISTS reserved_by TEXT COLLATE "C",
        ADD COLUMN IF NOT EXISTS reserved_until TIMESTAMPTZ;
    CREATE SEQUENCE IF NOT EXISTS lease_epochs;
    ALTER TABLE leases
        ADD COLUMN IF NOT EXISTS epoch BIGINT NOT NULL DEFAULT nextval('lease_epochs');
    DROP FUNCTION IF EXISTS write_batch_at_head(
        TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], BOOL[], BOOL[], INT[], BIGINT[], TEXT[],
        BIGINT[], TEXT[], INT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[],
        TEXT[], INT[], TEXT[], TEXT[], TEXT[], INT[], BIGINT[], TEXT[], BIGINT, TEXT, BIGINT);
"""
    + WRITE_BATCH_AT_HEAD_FN,
    # 9: the same function, its fence checks skipped for a batch without fences (most
    # batches): they cost about 150 us of a 600 us write, measured interleaved
    WRITE_BATCH_AT_HEAD_FN,
    # 10: the listing index in the order lists are read (``created_at NULLS FIRST``, as
    # SQLite sorts NULLs): in the default NULLS LAST order a page of 50 fetched and sorted
    # every document of the campaign (docs/explanation/scale.md, "PostgreSQL at 10^6")
    """
    DROP INDEX docs_listing;
    CREATE INDEX docs_listing ON docs (kind, owner, parent, created_at NULLS FIRST, key);
    """,
)

LATEST = len(MIGRATIONS)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def channel_for(schema: str) -> str:
    """The LISTEN/NOTIFY channel of one schema's log (63 bytes at most)."""
    return f"sessionstream:{schema}"[:63]


async def migrate(conn: Any, schema: str) -> int:
    """Bring ``schema`` to :data:`LATEST`; returns how many migrations ran.

    ``conn`` is an asyncpg connection outside a transaction.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", MIGRATION_LOCK, schema)
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        table = f"{quote_ident(schema)}.schema_migrations"
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {table}")
        if current > LATEST:
            raise StorageUnavailable(
                f"schema {schema} is at migration {current}, newer than this build's "
                f"{LATEST}; upgrade sessionstream on this node"
            )
        await conn.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
        for number in range(current + 1, LATEST + 1):
            await conn.execute(MIGRATIONS[number - 1])
            await conn.execute(f"INSERT INTO {table} (version) VALUES ($1)", number)
        return int(LATEST - current)
