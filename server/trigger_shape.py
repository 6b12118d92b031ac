"""The Trigger.dev realtime protocol's data, as pure functions of the run read model.

A run becomes one ``TaskRun`` row of an Electric shape (``run_row``, every
value spelled as Postgres text), its offset carries the run's seq (read back
by ``server.cursor.offset_seq``), and each run event is one SSE chunk.
``server/trigger.py`` serves them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sessionstream.core.vocabulary import TERMINAL, EventType
from sessionstream.server.frames import dumps
from sessionstream.server.numbers import seconds
from sessionstream.services.runs import INTERRUPTED

#: the stream key advertised in ``realtimeStreams``; any other key serves the same stream
STREAM_KEY = "chat"
TASK_IDENTIFIERS = {"turn": "framework-chat-turn", "examples": "generate-email-examples"}
#: run events that change the row; every other event (text deltas...) leaves it as it was
ROW_EVENTS = (
    frozenset({EventType.RUN_CREATED, EventType.RUN_STARTED, EventType.EXAMPLES_PROGRESS})
    | TERMINAL
)
JSON_TYPE = "application/json"

# run.status -> the database enum the SDK maps to its API status (QUEUED, EXECUTING, ...)
DB_STATUS = {
    "queued": "PENDING",
    "running": "EXECUTING",
    "completed": "COMPLETED_SUCCESSFULLY",
    "failed": "COMPLETED_WITH_ERRORS",
    "canceled": "CANCELED",
}

_TEXT: dict[str, Any] = {"type": "text"}
_TIMESTAMP: dict[str, Any] = {"type": "timestamp"}
COLUMNS: dict[str, dict[str, Any]] = {
    "id": _TEXT,
    "taskIdentifier": _TEXT,
    "friendlyId": _TEXT,
    "status": _TEXT,
    "createdAt": _TIMESTAMP,
    "updatedAt": _TIMESTAMP,
    "startedAt": _TIMESTAMP,
    "delayUntil": _TIMESTAMP,
    "queuedAt": _TIMESTAMP,
    "expiredAt": _TIMESTAMP,
    "completedAt": _TIMESTAMP,
    "number": {"type": "int4"},
    "isTest": {"type": "bool"},
    "usageDurationMs": {"type": "int4"},
    "costInCents": {"type": "float8"},
    "baseCostInCents": {"type": "float8"},
    "ttl": _TEXT,
    "payload": _TEXT,
    "payloadType": _TEXT,
    "metadata": _TEXT,
    "metadataType": _TEXT,
    "output": _TEXT,
    "outputType": _TEXT,
    "runTags": {"type": "text", "dims": 1},
    "error": {"type": "jsonb"},
    "realtimeStreams": {"type": "text", "dims": 1},
}
SCHEMA_HEADER = json.dumps(COLUMNS, separators=(",", ":"))
#: columns the SDK needs whatever ``skipColumns`` says
RESERVED = frozenset({"id", "taskIdentifier", "friendlyId", "status", "createdAt"})


def shape_timestamp(value: str | None) -> str | None:
    """``2025-01-01T12:00:00.000`` (UTC, no ``Z``): the SDK appends the ``Z`` itself."""
    if not value:
        return None
    return _parse_time(value).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _ms(value: str | None) -> int:
    return int(_parse_time(value).timestamp() * 1000) if value else 0


def pg_array(items: list[str]) -> str:
    quoted = ('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in items)
    return "{" + ",".join(quoted) + "}"


def db_status(run: Mapping[str, Any]) -> str:
    status = str(run["status"])
    if status == "failed" and run.get("error") == INTERRUPTED:
        return "SYSTEM_FAILURE"  # the process died under it, not the model
    return DB_STATUS.get(status, "PENDING")


def run_row(run: Mapping[str, Any], run_input: Any = None) -> dict[str, str | None]:
    """The run read model as a ``TaskRun`` row, every value spelled as Postgres text."""
    finished = run.get("finished_at")
    started = run.get("started_at")
    output = run.get("output") if run["status"] == "completed" else None
    error = run.get("error") if run["status"] == "failed" else None
    metadata = {
        "sessionId": run["session_id"],
        "kind": run["kind"],
        "status": run["status"],
        "progress": run.get("progress"),
    }
    return {
        "id": run["id"],
        "taskIdentifier": TASK_IDENTIFIERS.get(run["kind"], str(run["kind"])),
        "friendlyId": run["id"],
        "status": db_status(run),
        "createdAt": shape_timestamp(run["created_at"]),
        "updatedAt": shape_timestamp(run["updated_at"]),
        "startedAt": shape_timestamp(started),
        "delayUntil": None,
        "queuedAt": shape_timestamp(run["created_at"]),
        "expiredAt": None,
        "completedAt": shape_timestamp(finished),
        "number": "0",
        "isTest": "f",
        "usageDurationMs": str(max(0, _ms(finished) - _ms(started)) if finished and started else 0),
        "costInCents": "0",
        "baseCostInCents": "0",
        "ttl": None,
        "payload": None if run_input is None else dumps(run_input),
        "payloadType": None if run_input is None else JSON_TYPE,
        "metadata": dumps(metadata),
        "metadataType": JSON_TYPE,
        "output": None if output is None else dumps(output),
        "outputType": None if output is None else JSON_TYPE,
        "runTags": None,
        "error": None if error is None else dumps({"type": "STRING_ERROR", "raw": str(error)}),
        "realtimeStreams": pg_array([STREAM_KEY]),
    }


def row_offset(run: Mapping[str, Any]) -> str:
    """``<updatedAtMs>_<seq>``: opaque to the client, the run's seq to us."""
    return f"{_ms(run.get('updated_at'))}_{int(run['seq'])}"


def shape_body(run_id: str, row: dict[str, str | None] | None, operation: str) -> str:
    messages: list[dict[str, Any]] = []
    if row is not None:
        key = f'"public"."TaskRun"/"{run_id}"'
        messages.append({"key": key, "value": row, "headers": {"operation": operation}})
    messages.append({"headers": {"control": "up-to-date"}})
    return dumps(messages)


def stream_frame(seq: int, chat_stream_event: str) -> bytes:
    """One chunk of the SDK's "v1" stream: the run's seq as the id, the frame as the data."""
    return f"id: {seq}\ndata: {chat_stream_event}\n\n".encode()


def parse_timeout_seconds(raw: str | None) -> float | None:
    """``Timeout-Seconds`` held to 1-600, as the Trigger.dev server holds it."""
    if raw is None or raw.strip(" \t") == "":
        return None
    return min(600.0, max(1.0, seconds(raw, "Timeout-Seconds")))
