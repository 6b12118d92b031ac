"""Settings: every variable a user sets, with its type, default, bounds and meaning.

Each name is spelled once, here (the storage group in ``core/storage_settings.py``):
``docs/configuration.md`` is rendered from this model (``sessionstream config
--markdown``, checked by a test) and the CLI's flags are declared from its fields.
A ``Settings(...)`` built in code holds exactly what the code says; only
``Settings.from_env`` reads the environment, so a variable a developer exported
never leaks into tests or benchmarks that build their own.

The environment is read by a source of our own, not pydantic-settings'
``EnvSettingsSource``: five published names break the prefix rule
(``SESSIONSTREAM_DB``, the OpenAI SDK's ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``,
the Anthropic SDK's ``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL``), and aliasing
them there makes the prefixed field name work too once code may set the field by
name, a second spelling nobody documents.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sessionstream.core.errors import ConfigError
from sessionstream.core.problems import Problem, config_error, phrase
from sessionstream.core.storage_settings import StorageSettings

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_ANTHROPIC_MODEL = "claude-haiku-5-5"
DEFAULT_ENGINE_TIMEOUT_S = 60.0
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


#: a PostgreSQL statement's bound unless the lease is shorter (``pg_statement_timeout_s``)
DEFAULT_STATEMENT_TIMEOUT_S = 5.0


class Settings(StorageSettings, BaseSettings):
    """One node's configuration, validated once, then frozen."""

    model_config = SettingsConfigDict(
        env_prefix="SESSIONSTREAM_", frozen=True, extra="forbid", allow_inf_nan=False
    )
    # json_schema_extra carries what pydantic has no word for: "env", a variable off the
    # prefix rule; "flag", the CLI flag; "hint", said after a problem with the value

    # -- the HTTP server -------------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="The address the server listens on.",
        json_schema_extra={"flag": "--host"},
    )
    port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        description="The port the server listens on.",
        json_schema_extra={"flag": "--port"},
    )
    keepalive_s: float = Field(
        default=15.0,
        gt=0,
        description="How long a connection that sends no request is kept open: a new "
        "one that never sends its first request, or one idle between requests. Without "
        "it an unauthenticated idle connection held a slot 75 s.",
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="Request body limit (4 MiB); a larger body, chunked ones too, gets "
        "413 `payload_too_large`.",
    )
    max_message_chars: int = Field(
        default=32_000, ge=1, description="The longest turn message; a longer one gets 400."
    )
    max_leads: int = Field(
        default=100, ge=1, description="Leads in one generate-examples call; more get 400."
    )
    rate_limit: float = Field(
        default=50.0,
        ge=0,
        description="Requests per second per credential, realtime channels included; "
        "beyond, 429 `rate_limited` with `Retry-After`. 0 turns the limit off.",
    )
    rate_burst: int = Field(
        default=100, ge=1, description="Requests a credential may make at once, above the rate."
    )
    auth_failure_rate: float = Field(
        default=2.0,
        ge=0,
        description="Failed authentications per second per client address; an address "
        "past its burst gets 429 before any token lookup, so guessing tokens stays slow. "
        "Behind a reverse proxy every client shares its address: raise the burst, or set "
        "0 (off) and limit at the proxy.",
    )
    auth_failure_burst: int = Field(
        default=20, ge=1, description="Failed authentications an address may make at once."
    )
    token_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="How long a resolved API token is trusted without a lookup, so a "
        "revoked token keeps working at most this long; 0 looks every request up. Open "
        "realtime channels are checked this often (at least every 1 s): those opened with "
        "a revoked token, or with a run token it minted, close with 4401.",
    )
    run_token_ttl_s: int = Field(
        default=15 * 60,
        ge=1,
        description="Lifetime of a `publicAccessToken`; realtime refuses an expired one with 401.",
    )

    # -- model engines ---------------------------------------------------------------------
    engine: Literal["offline", "openai", "anthropic"] = Field(
        default="offline",
        description="`offline`: deterministic, no network. `openai`: any "
        "OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp, "
        "LiteLLM), set by `SESSIONSTREAM_MODEL`, `OPENAI_BASE_URL` and `OPENAI_API_KEY`. "
        "`anthropic`: Claude through the Anthropic Messages API, set by "
        "`SESSIONSTREAM_MODEL`, `ANTHROPIC_BASE_URL` and `ANTHROPIC_API_KEY` "
        "(`pip install 'sessionstream[anthropic]'`).",
        json_schema_extra={"flag": "--engine"},
    )
    offline_pace_ms: float = Field(
        default=25.0,
        ge=0,
        description="The offline engine's delay per streamed word; 0 streams as fast as it can.",
    )
    model: str = Field(
        default=DEFAULT_MODEL,
        min_length=1,
        description=f"The model the `openai` and `anthropic` engines ask for. Unset, "
        f"`{DEFAULT_MODEL}` for `openai` and `{DEFAULT_ANTHROPIC_MODEL}` for `anthropic`.",
    )
    openai_base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="The `openai` engine's endpoint, e.g. `http://127.0.0.1:11434/v1` "
        "for Ollama; unset, the OpenAI API. The OpenAI SDK's own name, so unprefixed.",
        json_schema_extra={"env": "OPENAI_BASE_URL", "hint": "(http:// or https://)"},
    )
    openai_api_key: str | None = Field(
        default=None,
        min_length=1,
        repr=False,
        description="The `openai` engine's API key: required for the OpenAI API; a local "
        "server at `OPENAI_BASE_URL` ignores it. The OpenAI SDK's own name, so unprefixed.",
        json_schema_extra={"env": "OPENAI_API_KEY"},
    )
    anthropic_base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="The `anthropic` engine's endpoint, without `/v1` (the SDK adds it); "
        "unset, `https://api.anthropic.com`. The Anthropic SDK's own name, so unprefixed.",
        json_schema_extra={"env": "ANTHROPIC_BASE_URL", "hint": "(http:// or https://)"},
    )
    anthropic_api_key: str | None = Field(
        default=None,
        min_length=1,
        repr=False,
        description="The `anthropic` engine's API key: required for the Anthropic API; a "
        "server at `ANTHROPIC_BASE_URL` that needs none is sent a dummy. The Anthropic "
        "SDK's own name, so unprefixed.",
        json_schema_extra={"env": "ANTHROPIC_API_KEY"},
    )
    engine_timeout_s: float = Field(
        default=DEFAULT_ENGINE_TIMEOUT_S,
        gt=0,
        description="A model that sends nothing for this long fails the run and frees "
        "the session; also the `openai` and `anthropic` engines' request timeout.",
    )

    # -- runs ------------------------------------------------------------------------------
    max_concurrent_runs: int = Field(
        default=32, ge=1, description="Runs executing at once in this process; more wait in line."
    )
    max_queued_runs: int = Field(
        default=1000,
        ge=0,
        description="Runs waiting for a slot; beyond, a turn or generate-examples gets "
        "503 `overloaded` with `Retry-After`, before anything is written.",
    )
    max_examples_concurrency: int = Field(
        default=4, ge=1, description="Leads generated at once within one examples run."
    )
    delta_coalesce_ms: float = Field(
        default=0.0,
        ge=0,
        description="Least spacing between one run's `message.delta` events. Whatever it "
        "is, streamed text is written as soon as the log can take it: at once on an idle "
        "writer, gathered into the next delta while the run's previous one commits "
        "(docs/explanation/token-latency.md). 0 adds no spacing.",
    )
    keep_raw_deltas: bool = Field(
        default=False,
        description="Keep a finished run's events, and a session's past turns, as rows of "
        "the log. By default all but a run's terminal event are packed into one compressed "
        "row per run once it ends, and all but a session's last event as each of its turns "
        "ends, read back as the same events (see docs/explanation/scale.md).",
    )
    max_pending_appends: int = Field(
        default=10_000,
        ge=1,
        description="Appends waiting for the log's single writer; beyond, writes get 503 "
        "`overloaded`, so memory stays bounded when the disk cannot keep up.",
    )

    # -- memory per request ------------------------------------------------------------------
    page_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        description="Bytes of stored event JSON one page holds at most: the events "
        "endpoint and every realtime catch-up read stop before it (1 MiB), whatever their "
        "row limit. An event larger than this still comes, alone, so a reader always "
        "moves on.",
    )
    patch_max_items: int = Field(
        default=10_000,
        ge=1,
        description="Items any one array, and entries any one object, in a session PATCH "
        "body may hold, at any depth (`messages`, `skeleton_history`, ...); more is a 400 "
        "naming the field, and nothing is written.",
    )
    patch_max_chars: int = Field(
        default=1_000_000,
        ge=1,
        description="Characters any one string in a session PATCH body may hold (a title, a "
        "draft, a message's content, a key); longer is a 400 naming the field.",
    )
    user_quota_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=0,
        description="Bytes of events one user's requests may store in all (1 GiB; the log "
        "is append-only, so deleting gives nothing back). A write that would pass it gets "
        "413 `quota_exceeded` and nothing is written. 0 turns the quota off.",
    )
    catchup_reads: int = Field(
        default=4,
        ge=1,
        description="Catch-up pages read at the same time for all realtime channels "
        "together; the others queue, so many clients replaying a large history hold "
        "a few pages, not one each, and the event loop stays free.",
    )

    # -- realtime channels -----------------------------------------------------------------
    subscriber_queue: int = Field(
        default=1024,
        ge=1,
        description="Events buffered per live subscriber; one that overflows falls back "
        "to catch-up reads from the log.",
    )
    max_connections_per_user: int = Field(
        default=64,
        ge=1,
        description="Realtime channels (websocket, SSE, Trigger.dev streams) one user may "
        "hold; one more is refused with close 4429 or HTTP 429.",
    )
    max_connections: int = Field(
        default=10_000, ge=1, description="Realtime channels per process; one more is refused."
    )
    ws_heartbeat_s: float = Field(
        default=20.0,
        gt=0,
        description="Websocket ping interval; a peer that misses a pong is closed.",
    )
    ws_send_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="A realtime client that reads nothing for this long is cut off"
        " (websocket close 4408); one reading a large frame slowly is not.",
    )
    ws_close_timeout_s: float = Field(
        default=2.0, gt=0, description="How long a close handshake is waited for."
    )
    sse_ping_s: float = Field(
        default=15.0, gt=0, description="A comment line keeps an idle SSE stream open this often."
    )
    trigger_poll_s: float = Field(
        default=20.0,
        gt=0,
        description="Trigger.dev-protocol long-poll duration before an empty answer.",
    )
    trigger_ping_s: float = Field(
        default=10.0, gt=0, description="Keep-alive interval on Trigger.dev-protocol streams."
    )

    # -- several nodes ---------------------------------------------------------------------
    lease_ttl_s: float = Field(
        default=15.0,
        gt=0,
        description="Run lease lifetime on PostgreSQL. A node renews its leases every "
        "TTL/4; a dead node's runs end as `run.failed` (`interrupted`) about 1.25 times the TTL "
        "after it died. Shorter recovers faster, but a node paused longer than the TTL "
        "loses its runs. It also bounds the log's head lock: a transaction holding it idle "
        "is ended after TTL/2 (any other idle transaction after TTL), a write statement or a "
        "wait for the lock after the statement timeout (at most TTL/2), and a writer's "
        "reservation of the next write lapses after min(TTL/8, 1 s).",
    )
    fault_stop_in_append: str = Field(
        default="",
        description="Fault injection for tests, never for production: a file path. While "
        "the file exists, this node's PostgreSQL writer reserves the log's head in its next "
        "append, plans the batch, deletes the file and stops its own process (SIGSTOP), so "
        "a test can pause a node at exactly that point and resume it with SIGCONT.",
    )
    run_storage_wait_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a running turn or example run waits for storage that refuses "
        "its writes (a database failing over, a lost connection) before it fails: its "
        "deltas and its end are written again, unchanged, until storage answers. 60 s "
        "covers a pg_auto_failover failover of a stopped primary (about 50 s of its own "
        "detection); a run that waits longer fails with the storage error as its reason, "
        "and its session is freed as soon as storage answers again.",
    )
    node_id: str = Field(
        default_factory=lambda: f"node-{secrets.token_hex(4)}",
        min_length=1,
        description="This node's name in run leases and logs; by default `node-` and "
        "8 random hex digits, new at every start.",
    )
    task_restart_bound_s: float = Field(
        default=30.0,
        gt=0,
        description="A background task (the log's writer, the event pump, run upkeep...) "
        "that keeps crashing for this long makes `/healthz` answer 503 and name it, so a "
        "load balancer stops sending this node clients.",
    )
    task_backoff_max_s: float = Field(
        default=5.0,
        gt=0,
        description="Longest wait before a crashed background task is restarted; the wait "
        "doubles from 50 ms at each crash in a row.",
    )
    delivery_heartbeat_s: float = Field(
        default=10.0,
        gt=0,
        description="How often every open realtime channel gets a heartbeat carrying this "
        "node's delivery position and the log head it knows, so a client can tell a quiet "
        "channel from a node that stopped delivering.",
    )
    log_level: LogLevel = Field(
        default="INFO",
        description="Level of the JSON log lines written to stderr.",
        json_schema_extra={"flag": "--log-level"},
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_in_any_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _model_for_the_engine(cls, data: Any) -> Any:
        """One variable names the model for either provider, so its default follows the
        engine: a Claude engine asking for an OpenAI model could never work."""
        if isinstance(data, dict) and data.get("engine") == "anthropic" and not data.get("model"):
            return {**data, "model": DEFAULT_ANTHROPIC_MODEL}
        return data

    @property
    def statement_timeout_s(self) -> float:
        """``pg_statement_timeout_s``, or its default below the lease."""
        if self.pg_statement_timeout_s is not None:
            return self.pg_statement_timeout_s
        return min(DEFAULT_STATEMENT_TIMEOUT_S, self.lease_ttl_s / 2)

    @model_validator(mode="after")
    def _statements_within_the_lease(self) -> Settings:
        if self.pg_statement_timeout_s is None:
            return self
        if self.pg_statement_timeout_s > self.lease_ttl_s / 2:
            raise ValueError(
                f"SESSIONSTREAM_PG_STATEMENT_TIMEOUT_S ({self.pg_statement_timeout_s:g}) must "
                f"be at most half of SESSIONSTREAM_LEASE_TTL_S ({self.lease_ttl_s:g})"
            )
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _asconfig_error(cls, data: Any, handler: Any) -> Any:
        """Every way of building settings fails the same way: a ConfigError, one line."""
        try:
            return handler(data)
        except ValidationError as exc:
            problems = [_problem(error) for error in exc.errors(include_url=False)]
            raise config_error(problems) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment comes in through from_env alone

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """The environment (``os.environ`` unless given), with ``overrides`` (CLI flags)
        on top; an override of None is a flag not given. An error names the flag when
        the bad value came from one."""
        given = {name: value for name, value in overrides.items() if value is not None}
        found = Environment(cls, os.environ if env is None else env)()
        try:
            return cls(**{**found, **given})
        except ConfigError as exc:
            problems: list[Problem] = exc.details["problems"]
            raise config_error(
                [
                    replace(p, label=flag_name(p.setting) or p.label) if p.setting in given else p
                    for p in problems
                ]
            ) from None


class Environment(PydanticBaseSettingsSource):
    """Reads each setting from exactly one variable, ``env_name(field)``.

    Surrounding whitespace is dropped and an empty variable counts as unset, so
    ``SESSIONSTREAM_PORT=`` in a compose file means the default, not an error.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raw = self.environ.get(env_name(field_name), "").strip()
        return (raw or None), field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                values[key] = value
        return values


def _extra(name: str, key: str) -> str | None:
    field = Settings.model_fields.get(name)
    extra = field.json_schema_extra if field is not None else None
    value = extra.get(key) if isinstance(extra, dict) else None
    return value if isinstance(value, str) else None


def env_name(name: str) -> str:
    """The one environment variable that sets field ``name``."""
    return _extra(name, "env") or f"{Settings.model_config.get('env_prefix', '')}{name.upper()}"


def flag_name(name: str) -> str | None:
    """The CLI flag that overrides field ``name``, if it has one."""
    return _extra(name, "flag")


def _problem(error: ErrorDetails) -> Problem:
    name = str(error["loc"][0]) if error["loc"] else "settings"
    text = phrase(error)
    field = Settings.model_fields.get(name)
    if field is None:
        return Problem(name, name, None, text)
    hint = _extra(name, "hint")
    shown = None if field.repr is False else error.get("input")
    return Problem(name, env_name(name), shown, f"{text} {hint}" if hint else text)
