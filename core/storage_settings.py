"""The settings that say where a node's data and keys live (``Settings``' first group).

A part of ``core/settings.py``'s model, kept apart for size: the fields come first
in ``Settings`` (so first in ``docs/configuration.md`` and ``--help``) and are read,
validated and documented there like every other. The key files a single node
generates beside its SQLite file are decided here, with the fields they depend on.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from sessionstream.core.errors import ConfigError
from sessionstream.core.secret import MIN_SECRET_CHARS, load_secret

DEFAULT_DB = "sessionstream.db"


class StorageSettings(BaseModel):
    """Where the log is, how to reach it, and the keys that sign for it."""

    # -- storage ---------------------------------------------------------------------------
    db_path: str = Field(
        default=DEFAULT_DB,
        min_length=1,
        description="The SQLite file. A generated run-token secret is kept beside it, "
        "in `<file>.secret`.",
        json_schema_extra={"env": "SESSIONSTREAM_DB", "flag": "--db"},
    )
    database_url: str | None = Field(
        default=None,
        pattern=r"^postgres(ql)?://",
        description="PostgreSQL instead of SQLite, for the server and every CLI command: "
        "`postgresql://user:password@host:port/db`, the same on every node. "
        "`?search_path=NAME` keeps a deployment in schema `NAME` (created if missing), "
        "with its own notification channel.",
        json_schema_extra={"flag": "--database-url", "hint": "(postgresql://...)"},
    )
    pg_connect_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="PostgreSQL: how long one host may take to accept a connection and "
        "answer before the next host of a multi-host URL is tried. A frozen primary that "
        "still accepts TCP is skipped after this, so a failover costs this much per "
        "frozen host, not one timeout for the whole host list.",
    )
    pg_statement_timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="PostgreSQL: the longest one read or write statement may take, in the "
        "client and (as `statement_timeout`) the server; past it the request is a 503 "
        "`storage_unavailable` with `Retry-After`, and the connection is replaced. At most "
        "half of `SESSIONSTREAM_LEASE_TTL_S`, so a stuck statement never outlives a run's "
        "lease; unset, 5 s or half the lease TTL if that is shorter. Rebuilds and imports "
        "run without it.",
    )
    pg_standby_reads: bool = Field(
        default=True,
        description="PostgreSQL: while no host of a multi-host URL answers as a primary "
        "(a failover), serve reads and realtime catch-up from a host that answers as a "
        "standby, which may lag the primary by its replication delay; writes wait for the "
        "primary. Reads go back to the primary as soon as writes work again. `false`: "
        "reads fail with writes (503) until a primary answers.",
    )
    storage_wait_s: float = Field(
        default=30.0,
        ge=0,
        description="PostgreSQL: how long a request waits for storage that refuses it for "
        "now (a failover: the primary gone, frozen or read-only, no new one yet) before it "
        "is answered 503 `storage_unavailable` with `Retry-After`. Meanwhile its write or "
        "read is tried again until a host answers; a write whose commit landed unanswered "
        "is not applied twice. The bound is the outage's: once storage has refused for "
        "this long, each request is tried once and answered at once. 30 s covers "
        "pg_auto_failover with the failover test's timeouts (at most 13 s measured); its "
        "default timeouts take about 50 s for a stopped primary. `0`: never wait.",
    )
    storage_max_waiting: int = Field(
        default=1000,
        ge=0,
        description="PostgreSQL: how many reads, and how many appends, may wait for storage "
        "at once (`SESSIONSTREAM_STORAGE_WAIT_S`); each holds its request's memory. The "
        "next one is answered 503 `storage_unavailable` with `Retry-After` at once.",
    )
    secret: str | None = Field(
        default=None,
        min_length=MIN_SECRET_CHARS,
        repr=False,
        description="Signs the run-scoped `publicAccessToken`s. Unset, a single node "
        "generates one beside its SQLite file; nodes sharing PostgreSQL must all be given "
        "the same value and refuse to start without it.",
        json_schema_extra={
            "hint": "(HS256 wants a key as long as its hash; try `openssl rand -base64 48`)"
        },
    )
    log_key: str | None = Field(
        default=None,
        repr=False,
        pattern=r"^PRIVATE\+KEY\+[^+\s]+\+[0-9a-f]{8}\+[A-Za-z0-9+/=]+$",
        description="The Ed25519 key that signs the log's checkpoints, as a C2SP/Go note "
        "signing key (`PRIVATE+KEY+<name>+<hash>+<key>`; `<name>` is the log's origin). "
        "Unset, a single node generates one beside its SQLite file, in `<file>.logkey`; "
        "nodes sharing PostgreSQL must all be given the same value.",
        json_schema_extra={"hint": "(print one with `sessionstream checkpoint --new-key NAME`)"},
    )
    checkpoint_interval_s: float = Field(
        default=300.0,
        gt=0,
        description="How often the server records a signed checkpoint of the log "
        "(`GET /api/log/checkpoint`); `sessionstream checkpoint` records one on demand.",
    )

    def secret_file(self) -> Path:
        """Where a single node keeps its generated run-token secret. Nodes sharing
        PostgreSQL have none: each would generate its own, and a run token minted by
        one node would be refused by the next."""
        if self.db_path == ":memory:" and not self.database_url:
            raise ConfigError(
                "an in-memory database has no file to keep a run-token secret beside; "
                "set SESSIONSTREAM_SECRET"
            )
        if self.database_url:
            raise ConfigError(
                "SESSIONSTREAM_SECRET must be set when nodes share PostgreSQL "
                "(every node needs the same secret to verify run tokens)"
            )
        return Path(f"{self.db_path}.secret")

    def log_key_file(self) -> Path:
        """Where a single node keeps its generated checkpoint signing key."""
        if self.db_path == ":memory:":
            raise ConfigError("an in-memory database has no file to keep a log key beside")
        if self.database_url:
            raise ConfigError(
                "SESSIONSTREAM_LOG_KEY must be set to sign checkpoints when nodes share "
                "PostgreSQL (every node signs as the same log)"
            )
        return Path(f"{self.db_path}.logkey")

    def resolved_secret(self) -> str:
        """The run-token signing secret; a single node keeps a generated one beside its
        DB (``core/secret.py``: written atomically, 0600, refused when short)."""
        if self.secret:
            return self.secret
        return load_secret(self.secret_file())
