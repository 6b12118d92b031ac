"""A client generated from the served OpenAPI document runs the documented flow.

``openapi-python-client`` (offline: it reads the document from a file) writes a typed
client; the README's walk-through then runs through it against a live server, and
every response it receives is checked against the same document with ``openapi-core``.
A document that under-declares (an untyped item, a missing status, a wrong format)
fails here the way it would fail a team that generated its client from it.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from openapi_core import OpenAPI
from werkzeug.datastructures import Headers, ImmutableMultiDict

import tests.conftest as conf
from sessionstream.server.app import create_app
from tests.torture.live import Live, live_server

PACKAGE = "sessionstream_generated_client"
BIN = Path(sys.executable).parent


@dataclass
class Checked:
    """Every response the generated client received, checked against the document."""

    spec: OpenAPI
    seen: list[tuple[str, str, int]] = field(default_factory=list)

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        self.spec.validate_response(_Request(response.request), _Response(response))
        request = response.request
        self.seen.append((request.method, request.url.path, response.status_code))


class _Request:
    """An httpx request as openapi-core reads one."""

    def __init__(self, request: httpx.Request) -> None:
        self._request = request
        url = urlsplit(str(request.url))
        self.host_url = f"{url.scheme}://{url.netloc}"
        self.path = url.path
        self.method = request.method.lower()
        self.body: bytes | None = request.content or None
        self.content_type = request.headers.get("Content-Type", "application/json")
        self.parameters = _parameters(url.query, request.headers)


def _parameters(query: str, headers: httpx.Headers) -> Any:
    from openapi_core.datatypes import RequestParameters

    return RequestParameters(
        query=ImmutableMultiDict(parse_qs(query)),
        header=Headers(dict(headers)),
        cookie=ImmutableMultiDict(),
    )


class _Response:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.content_type = response.headers.get("Content-Type", "")
        self.headers = Headers(dict(response.headers))
        self.data: bytes | None = response.content


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(conf.test_settings(tmp_path_factory.mktemp("doc")))
    from sessionstream.server.openapi import DOC

    built: dict[str, Any] = app[DOC]
    return built


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, document: dict[str, Any]) -> Iterator[Any]:
    """The client package ``openapi-python-client`` writes from the document."""
    where = tmp_path_factory.mktemp("generated")
    (where / "openapi.json").write_text(json.dumps(document), encoding="utf-8")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            "openapi.json",
            "--output-path",
            PACKAGE,
            "--meta",
            "none",
        ],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr
    sys.path.insert(0, str(where))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(where))
        for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[name]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_server(tmp_path_factory.mktemp("client"), SESSIONSTREAM_OFFLINE_PACE_MS="0") as s:
        yield s


def _module(package: Any, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def test_the_generated_client_runs_the_documented_flow(
    generated: Any, live: Live, document: dict[str, Any]
) -> None:
    checked = Checked(OpenAPI.from_dict(document))
    client = generated.AuthenticatedClient(
        base_url=live.base_url,
        token=live.token_a,
        raise_on_unexpected_status=True,
        httpx_args={"event_hooks": {"response": [checked]}},
    )
    api = {
        name: _module(generated, f"api.{tag}.{name}")
        for tag, names in {
            "campaigns": ("create_campaign", "add_node", "list_campaigns", "list_nodes"),
            "sessions": (
                "create_session",
                "get_session",
                "list_sessions",
                "start_turn",
                "generate_examples",
                "patch_session",
                "delete_session",
            ),
            "runs": ("get_run",),
            "history": ("session_events",),
        }.items()
        for name in names
    }
    models = _module(generated, "models")

    campaign = (
        api["create_campaign"]
        .sync(client=client, body=models.CreateCampaign(name="Q3 outbound"))
        .campaign
    )
    node = (
        api["add_node"]
        .sync(id=campaign.id, client=client, body=models.CreateNode(name="intro"))
        .node
    )
    # the key is a declared parameter, so the generated method takes it by name
    session = (
        api["create_session"]
        .sync(
            client=client,
            body=models.CreateSession(campaign_id=str(campaign.id), node_id=str(node.id)),
            idempotency_key="create-1",
        )
        .session
    )
    again = (
        api["create_session"]
        .sync(
            client=client,
            body=models.CreateSession(campaign_id=str(campaign.id), node_id=str(node.id)),
            idempotency_key="create-1",
        )
        .session
    )
    assert again.id == session.id  # Idempotency-Key works as the document says

    def wait_idle() -> Any:
        for _ in range(600):
            row = api["get_session"].sync(id=session.id, client=client).session
            if row.task_status is None:
                return row
            time.sleep(0.05)
        raise AssertionError("task_status never returned to null")

    def turn(message: str) -> Any:
        started = api["start_turn"].sync(
            id=session.id, client=client, body=models.TurnRequest(message=message)
        )
        run = api["get_run"].sync(run_id=started.run_id, client=client).run
        assert run.kind.value == "turn"
        return started

    turn("Write an intro email for enterprise VPs of Sales, emphasizing time-to-ROI")
    row = wait_idle()
    assert isinstance(row.messages[-1], models.Message) and row.messages[-1].role == "assistant"
    started = turn(
        "We are Acme Analytics. Proof: customers cut reporting time by 40%. CTA: a 15 minute call."
    )
    wait_idle()
    started = turn("Make it shorter and more formal")  # the README's three turns
    row = wait_idle()
    assert row.framework_version is not None and row.draft_subject
    run = api["get_run"].sync(run_id=started.run_id, client=client).run
    assert run.status.value == "completed" and run.finished_at is not None
    assert run.output.skeleton_updated in (True, False)  # typed, not a bare dict

    lead = models.ExampleLeadType0(id="l1")
    lead.additional_properties.update(
        {"first_name": "Dana", "company": "Northwind", "position": "VP of Sales"}
    )
    started = api["generate_examples"].sync(
        id=session.id,
        client=client,
        body=models.GenerateExamplesRequest(leads=[lead], is_first_batch=True),
    )
    row = wait_idle()
    (example,) = row.generated_examples
    assert isinstance(example, models.Example) and example.lead_id == "l1"
    assert "Northwind" in example.subject + example.body
    progress = api["get_run"].sync(run_id=started.run_id, client=client).run.progress
    assert progress.done == progress.total == 1

    listed = api["list_sessions"].sync(client=client, campaign_id=campaign.id).sessions
    assert [s.id for s in listed] == [session.id]
    events = api["session_events"].sync(id=session.id, client=client).events
    assert events and all(event.actor is not None for event in events)
    patched = (
        api["patch_session"]
        .sync(id=session.id, client=client, body=models.PatchSession(title="Intro to VPs"))
        .session
    )
    assert patched.title == "Intro to VPs"
    assert api["delete_session"].sync(id=session.id, client=client).success is True
    missing = api["get_session"].sync_detailed(id=session.id, client=client)
    assert missing.status_code == 404 and missing.parsed.error.code == "not_found"

    # every operation the flow used answered, and every answer matched the document
    assert {status for _, _, status in checked.seen} >= {200, 201, 404}
    assert len(checked.seen) >= 20
    client.get_httpx_client().close()
