"""The OpenAPI document says what the server does: shapes, formats, limits, headers, and
a description and tag on every operation; and the routes answer what it declares."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from sessionstream.server.openapi import DOC
from sessionstream.server.openapi_text import OPERATIONS, TAGS
from sessionstream.server.schemas import MAX_IDEMPOTENCY_KEY
from tests.conftest import Api

S = "/api/campaigns/ai-chat-sessions"


def _operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for item in doc["paths"].values() for op in item.values()]


async def test_the_document_is_valid_and_every_operation_described(api: Api) -> None:
    doc = api.app[DOC]
    validate(doc)
    tags = {name for name, _ in TAGS}
    assert [t["name"] for t in doc["tags"]] == [name for name, _ in TAGS]
    for op in _operations(doc):
        assert op["operationId"] in OPERATIONS, f"describe {op['operationId']} in openapi_text"
        assert op["description"] and op["tags"][0] in tags


async def test_items_formats_and_run_and_event_fields_are_declared(api: Api) -> None:
    schemas = api.app[DOC]["components"]["schemas"]
    row = schemas["SessionOut"]["properties"]
    messages = row["messages"]["anyOf"][0]["items"]["$ref"].rsplit("/", 1)[1]
    assert schemas[messages]["required"] == ["role", "content"]
    examples = row["generated_examples"]["anyOf"][0]["items"]["$ref"].rsplit("/", 1)[1]
    assert schemas[examples]["required"] == ["lead_id", "subject", "body"]
    assert row["id"]["format"] == "uuid" and row["created_at"]["format"] == "date-time"
    run = schemas["RunOut"]["properties"]
    assert {"started_at", "finished_at", "output", "progress"} <= set(run)
    assert "actor" in schemas["EventOut"]["properties"]
    lead = schemas["ExampleLead"]
    assert {tuple(branch["required"]) for branch in lead["anyOf"]} == {("id",), ("lead_id",)}
    assert "company" in lead["properties"]
    assert "anyOf" not in schemas["Lead"]  # a turn's sample leads need no id


async def test_the_limits_are_the_configured_ones(make_api: Any) -> None:
    api = await make_api(max_message_chars=50, max_leads=3)
    doc = api.app[DOC]
    schemas = doc["components"]["schemas"]
    assert schemas["TurnRequest"]["properties"]["message"]["maxLength"] == 50
    assert schemas["GenerateExamplesRequest"]["properties"]["leads"]["maxItems"] == 3
    # and they are what the server enforces: one character over is a 400
    session = await api.session()
    r = await api.client.post(
        f"{S}/{session['id']}/turn", json={"message": "x" * 51}, headers=api.h()
    )
    assert r.status == 400
    turn = doc["paths"][S + "/{id}/turn"]["post"]
    assert "500" in turn["responses"] and "409" in turn["responses"]
    assert "Idempotency-Key" in turn["description"]
    for path, method in (
        (S, "post"),
        (S + "/{id}/turn", "post"),
        (S + "/{id}/generate-examples", "post"),
    ):
        declared = {p["name"]: p for p in doc["paths"][path][method]["parameters"]}
        assert declared["Idempotency-Key"]["in"] == "header", path
        assert declared["Idempotency-Key"]["schema"]["maxLength"] == MAX_IDEMPOTENCY_KEY
    # and the bound it declares is the one enforced, with nothing started
    r = await api.client.post(
        f"{S}/{session['id']}/turn",
        json={"message": "hi"},
        headers={**api.h(), "Idempotency-Key": "k" * (MAX_IDEMPOTENCY_KEY + 1)},
    )
    assert r.status == 400 and (await r.json())["error"]["code"] == "validation_error"
    row = await api.client.get(f"{S}/{session['id']}", headers=api.h())
    assert (await row.json())["session"]["task_status"] is None
    get = doc["paths"][S + "/{id}"]["get"]["responses"]["200"]
    assert "ETag" in get["headers"]


async def test_methods_the_sessions_collection_lacks_are_405_not_campaign_requests(
    api: Api,
) -> None:
    """DELETE used to fall through to ``/api/campaigns/{id}`` with the id
    "ai-chat-sessions" and answer 400; the collection allows GET, HEAD and POST."""
    for method in ("DELETE", "OPTIONS", "PUT", "PATCH"):
        r = await api.client.request(method, S, headers=api.h())
        assert r.status == 405, (method, await r.text())
        assert set(r.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}
        assert (await r.json())["error"]["code"] == "method_not_allowed"
    # campaigns themselves still route, and a malformed id is still a 400
    campaign, _ = await api.campaign_and_node()
    assert (await api.client.get(f"/api/campaigns/{campaign}", headers=api.h())).status == 200
    assert (await api.client.get("/api/campaigns/nope", headers=api.h())).status == 400
    r = await api.client.delete(f"/api/campaigns/{campaign}", headers=api.h())
    assert r.status == 200


async def test_a_patch_writes_messages_and_examples_of_the_documented_shape(api: Api) -> None:
    """Stricter than before: items must be ``{role, content}`` / ``{lead_id, subject, body}``
    (other keys ride along), as the row documents them; a PATCH used to take any object."""
    session = await api.session()
    url = f"{S}/{session['id']}"
    for body in (
        {"messages": [{"role": "user"}]},
        {"messages": [{"role": "user", "content": 1}]},
        {"messages": ["hello"]},
        {"generated_examples": [{"lead_id": "l1", "subject": "s"}]},
    ):
        r = await api.client.patch(url, json=body, headers=api.h())
        assert r.status == 400, body
    good = {
        "messages": [{"role": "user", "content": "hi", "at": "kept"}],
        "generated_examples": [{"lead_id": "l1", "subject": "s", "body": "b"}],
    }
    r = await api.client.patch(url, json=good, headers=api.h())
    assert r.status == 200, await r.text()
    row = (await r.json())["session"]
    assert row["messages"] == good["messages"]
    assert row["generated_examples"] == good["generated_examples"]
