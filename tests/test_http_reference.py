"""The HTTP reference page is the OpenAPI document, rendered; never edited apart from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sessionstream.cli.http_reference import REGENERATE, markdown, served_document, type_of

ROOT = Path(__file__).resolve().parent.parent


def test_the_http_reference_is_generated_from_the_served_document() -> None:
    committed = (ROOT / "docs" / "reference" / "http.md").read_text(encoding="utf-8")
    assert committed == markdown(), f"docs/reference/http.md is stale; run: {REGENERATE}"


def test_every_operation_parameter_and_schema_has_its_place() -> None:
    document = served_document()
    page = markdown(document)
    for item in document["paths"].values():
        for op in item.values():
            assert f"`{op['operationId']}`" in page, op["operationId"]
            for param in op.get("parameters", []):
                assert f"| `{param['name']}` |" in page, (op["operationId"], param["name"])
    for name in document["components"]["schemas"]:
        assert f"\n### {name}\n" in page, name


def test_a_change_to_the_document_changes_the_page() -> None:
    document: dict[str, Any] = served_document()
    before = markdown(document)
    turn = document["paths"]["/api/campaigns/ai-chat-sessions/{id}/turn"]["post"]
    turn["responses"]["418"] = {"description": "A teapot", "content": {}}
    assert markdown(document) != before
    assert "| 418 | A teapot |" in markdown(document)


def test_types_read_as_a_reader_says_them() -> None:
    assert type_of({"$ref": "#/components/schemas/Message"}) == "[Message](#message)"
    assert (
        type_of({"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]})
        == "array of string, nullable"
    )
    assert type_of({"type": "string", "format": "uuid"}) == "string (uuid)"
    assert type_of({"type": "string", "enum": ["a", "b"]}) == "string: `a`, `b`"
