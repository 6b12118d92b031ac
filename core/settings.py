"""Settings, read once from the environment and CLI flags.

Every name a user sets is spelled once here; the README's configuration
table mirrors this module.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_DB = "sessionstream.db"
MIN_SECRET_CHARS = 32


def env_name(field_name: str) -> str:
    """The environment variable that sets a field (the README's configuration table)."""
    return "SESSIONSTREAM_DB" if field_name == "db_path" else f"SESSIONSTREAM_{field_name.upper()}"


@dataclass(frozen=True, slots=True)
class Settings:
    db_path: str = DEFAULT_DB
    database_url: str | None = None
    secret: str | None = None
    engine: str = "offline"
    offline_pace_ms: float = 25.0
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    max_message_chars: int = 32_000
    max_leads: int = 100
    rate_limit: float = 50.0  # requests/s per token; 0 turns it off
    rate_burst: int = 100
    auth_failure_rate: float = 2.0  # failed authentications/s per client address
    auth_failure_burst: int = 20
    token_cache_s: float = 5.0  # how long a resolved API token is trusted without a lookup
    run_token_ttl_s: int = 15 * 60
    max_concurrent_runs: int = 32
    max_queued_runs: int = 1000  # runs waiting for a slot; beyond, turns get 503
    max_pending_appends: int = 10_000  # append requests waiting for the writer; beyond, 503
    max_examples_concurrency: int = 4
    delta_coalesce_ms: float = 30.0
    subscriber_queue: int = 1024
    max_connections_per_user: int = 64
    max_connections: int = 10_000
    ws_heartbeat_s: float = 20.0
    ws_send_timeout_s: float = 5.0
    ws_close_timeout_s: float = 2.0
    sse_ping_s: float = 15.0
    trigger_poll_s: float = 20.0
    trigger_ping_s: float = 10.0
    engine_timeout_s: float = 60.0
    lease_ttl_s: float = 15.0
    node_id: str = field(default_factory=lambda: f"node-{secrets.token_hex(4)}")
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Every field ``name`` is read from ``SESSIONSTREAM_<NAME>`` (``db_path``: ``_DB``)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, kind in _FIELD_TYPES.items():
            raw = env.get(env_name(name))
            if raw is None or raw == "":
                continue
            try:
                values[name] = kind(raw)
            except ValueError:
                raise SystemExit(
                    f"{env_name(name)}={raw!r} is not a valid {kind.__name__}"
                ) from None
        clean = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**values, **clean})

    def resolved_secret(self) -> str:
        """The run-token signing secret; a single node keeps a generated one beside its DB."""
        if self.secret:
            if len(self.secret) < MIN_SECRET_CHARS:
                raise SystemExit(
                    f"SESSIONSTREAM_SECRET must be at least {MIN_SECRET_CHARS} characters "
                    "(HS256 wants a key as long as its hash; try `openssl rand -base64 48`)"
                )
            return self.secret
        if self.database_url:
            raise SystemExit(
                "SESSIONSTREAM_SECRET must be set when nodes share PostgreSQL "
                "(every node needs the same secret to verify run tokens)"
            )
        path = Path(f"{self.db_path}.secret")
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        return value


_PARSERS: dict[str, type] = {"int": int, "float": float, "str": str, "str | None": str}
#: field name -> the type its environment variable is parsed as
_FIELD_TYPES: dict[str, type] = {f.name: _PARSERS[str(f.type)] for f in fields(Settings)}
