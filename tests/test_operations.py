"""Operations: metrics, OpenAPI, health, doctor, backup, JSON logs without tokens."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from sessionstream.cli.main import main
from sessionstream.core.logs import JsonFormatter, redact
from tests.conftest import Api


async def test_metrics_exposes_requests_appends_and_levels(api: Api) -> None:
    await api.session()
    r = await api.client.get("/metrics")
    assert r.status == 200
    text = await r.text()
    for name in (
        "sessionstream_http_requests_total",
        "sessionstream_http_request_seconds_bucket",
        "sessionstream_appended_events_total",
        "sessionstream_append_batch_requests_bucket",
        "sessionstream_runs_active",
        "sessionstream_subscribers",
        "sessionstream_subscriber_queued_events",
        "sessionstream_recoveries",
    ):
        assert name in text, name
    appended = [
        line for line in text.splitlines() if line.startswith("sessionstream_appended_events_total")
    ]
    assert float(appended[0].split()[-1]) >= 4  # two users, campaign, node, session


async def test_openapi_document_and_health(api: Api) -> None:
    r = await api.client.get("/api/openapi.json")
    doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    assert "/api/campaigns/ai-chat-sessions/{id}/turn" in doc["paths"]
    r = await api.client.get("/healthz")
    assert (await r.json())["status"] == "ok"


def test_logs_are_json_and_never_carry_tokens() -> None:
    record = logging.LogRecord(
        "sessionstream",
        logging.INFO,
        __file__,
        1,
        "auth Bearer sst_abcdefghijklmnop and ?token=eyJa.eyJb.sig",
        None,
        None,
    )
    record.request_id = "r1"
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert entry["request_id"] == "r1"
    assert "sst_abcdefghijklmnop" not in line and "eyJa.eyJb.sig" not in line
    assert redact("x sst_0123456789abcdef y") == "x [redacted] y"


def test_doctor_and_backup(tmp_path: Path, capsys: Any) -> None:
    db = tmp_path / "ops.db"
    assert main(["users", "create", "ops", "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["doctor", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "database" in out and "schema" in out and "healthy" in out
    target = tmp_path / "copy.db"
    assert main(["backup", str(target), "--db", str(db)]) == 0
    conn = sqlite3.connect(target)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
    conn.close()
    assert main(["backup", str(target), "--db", str(db)]) == 2  # never overwrites
