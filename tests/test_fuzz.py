"""Schemathesis against the server's own OpenAPI document, on a live server process.

Two runs over the same document: a stateless one (every operation, positive
and negative inputs, some cases pointed at real ids seeded beforehand) and a
stateful one (the document's links chain create -> get / patch / turn /
delete). Every response must be no 5xx, conform to the documented schema,
and every error must carry the documented ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import copy
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeAlias, cast

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from sessionstream.core.settings import Settings
from sessionstream.server.app import create_app
from sessionstream.server.openapi import DOC
from tests.torture.live import Live, live_server
from tests.torture.report import report

MAX_EXAMPLES = 30
STATEFUL_EXAMPLES = 80
#: every case here is an OpenAPI operation's; the alias keeps the tests' source (and so
#: hypothesis's derandomized seed, a digest of it) as it was
Case: TypeAlias = schemathesis.Case[Any]
counts = {"stateless": 0, "stateful": 0}
#: (run, operation, status) -> responses, to show the fuzzer reached real resources
statuses: Counter[tuple[str, str, int]] = Counter()


def error_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """Every 4xx/5xx body is ``{"error": {"code": str, "message": str, ...}}``."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError as exc:
        raise AssertionError(f"error body is not JSON: {response.text[:200]!r}") from exc
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"no 'error' object in {body!r}"
    assert isinstance(error.get("code"), str) and error["code"], f"no error code in {body!r}"
    assert isinstance(error.get("message"), str) and error["message"], f"no message in {body!r}"
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    error_shape,
]


STATEFUL_CHECKS = [c for c in CHECKS if c is not negative_data_rejection]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_server(tmp_path_factory.mktemp("fuzz"), SESSIONSTREAM_OFFLINE_PACE_MS="0") as server:
        yield server


def served_document() -> dict[str, Any]:
    """The document the server serves, built by the same app assembly (no server needed)."""
    settings = Settings(
        db_path=str(Path(tempfile.gettempdir()) / "fuzz-unused.db"), secret="x" * 32
    )
    app = create_app(settings)
    document: dict[str, Any] = app[DOC]
    return document


def without_idempotency_keys(document: dict[str, Any]) -> dict[str, Any]:
    """The document minus its ``Idempotency-Key`` parameters, for fuzzing only.

    A stateful replay of a case re-sends the key its first run used and gets the first
    answer back, so replays diverge and hypothesis reports a flaky strategy; the key's
    own behaviour is tested in ``tests/test_runs.py`` and ``tests/test_write_path.py``.
    """
    fuzzed = copy.deepcopy(document)
    for item in fuzzed["paths"].values():
        for op in item.values():
            kept = [p for p in op.get("parameters", []) if p["name"] != "Idempotency-Key"]
            if "parameters" in op:
                op["parameters"] = kept
            if not kept:
                op.pop("parameters", None)
    return fuzzed


DOCUMENT = served_document()
FUZZED = without_idempotency_keys(DOCUMENT)
schema = schemathesis.openapi.from_dict(FUZZED)
schema.config.generation.update(
    max_examples=MAX_EXAMPLES,
    database="none",
    # the bearer token is sent by the test; extra query keys are ignored by design
    with_security_parameters=False,
    allow_extra_parameters=False,
)
# Preconditions are evaluated before the body (RFC 9110 13.2.2): a stale or malformed
# If-Match answers 412 even when the body is invalid too, and that is a refusal.
rejection = schema.config.checks.negative_data_rejection
rejection.expected_statuses = [*rejection.expected_statuses, "412"]
#: stateful chains need valid steps to get anywhere (a 201 to follow a link from)
chains = schemathesis.openapi.from_dict(FUZZED)
chains.config.generation.update(
    modes=[GenerationMode.POSITIVE],
    database="none",
    with_security_parameters=False,
    allow_extra_parameters=False,
)
# follow the document's own links only: inferred ones guess, e.g. a campaign id as a session id
chains.config.phases.stateful.inference.algorithms = []
#: the session lifecycle, so most steps land on a resource a previous step created
LIFECYCLE = (
    "createCampaign",
    "addNode",
    "createSession",
    "getSession",
    "patchSession",
    "startTurn",
    "generateExamples",
    "sessionEvents",
    "rollbackSkeleton",
    "rollbackDraft",
    "deleteSession",
    "getRun",
    "cancelRun",
)
chains = cast(OpenApiSchema, chains.include(operation_id=list(LIFECYCLE)))


def real_id(live: Live, path: str) -> str:
    """The seeded id an operation's ``{id}`` names: a session's or a campaign's."""
    if path.startswith("/api/campaigns/ai-chat-sessions/"):
        return live.seeded_a.session_id
    return live.seeded_a.campaign_id


def test_the_served_document_is_the_fuzzed_one(live: Live) -> None:
    status, served, _ = live.call(None, "GET", "/api/openapi.json")
    assert status == 200 and served == DOCUMENT


@schema.parametrize()
@schema.given(use_real=st.integers(0, 3))
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_stateless(case: Case, use_real: int, live: Live) -> None:
    """Random and invalid inputs to every operation; a quarter of them on real ids."""
    if use_real == 0 and case.path_parameters and "id" in case.path_parameters:
        case.path_parameters["id"] = real_id(live, case.operation.path)
        if case.method.upper() == "DELETE":
            # deleting the seeded resources would turn every later real-id case into a 404
            case.path_parameters["id"] = live.seeded_b.session_id
    counts["stateless"] += 1
    response = case.call(base_url=live.base_url, headers=auth(live))
    statuses["stateless", case.operation.label, response.status_code] += 1
    case.validate_response(response, checks=CHECKS)


def auth(live: Live) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.token_a}"}


def test_stateful(live: Live) -> None:
    """Chains of linked calls: create a session, then read, patch, turn and delete it."""
    machine = chains.as_state_machine()

    class Machine(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Case) -> dict[str, Any]:
            return {"base_url": live.base_url, "headers": auth(live)}

        def validate_response(self, response: Response, case: Case, **kwargs: Any) -> None:
            counts["stateful"] += 1
            statuses["stateful", case.operation.label, response.status_code] += 1
            case.validate_response(response, checks=STATEFUL_CHECKS)

    Machine.run(
        settings=hypothesis.settings(
            max_examples=STATEFUL_EXAMPLES,
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            derandomize=True,
            database=None,
        )
    )
    # the chains reached resources they created, not only 404s on random ids
    reached = {op for (run, op, status) in statuses if run == "stateful" and status < 300}
    assert {
        "GET /api/campaigns/ai-chat-sessions/{id}",
        "PATCH /api/campaigns/ai-chat-sessions/{id}",
        "POST /api/campaigns/ai-chat-sessions/{id}/turn",
    } <= reached, sorted(reached)


@pytest.fixture(scope="module", autouse=True)
def fuzz_report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    total = counts["stateless"] + counts["stateful"]
    ok = sum(n for (_, _, status), n in statuses.items() if status < 300)
    line = (
        f"fuzz: {total} cases run ({counts['stateless']} stateless, {counts['stateful']} "
        f"stateful; {ok} answered 2xx), no 5xx, every error body shaped"
    )
    report(request.config, line)
    print(line)
