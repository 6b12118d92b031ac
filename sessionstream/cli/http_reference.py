"""``docs/reference/http.md``, rendered from the OpenAPI document the server serves.

The reader of the docs site and a client generator then see one description of
every operation, parameter, header, status and schema: the document the server
assembles at start-up (``server/openapi.py``, ``server/openapi_text.py``). A test
compares the committed file with :func:`markdown`, so a route, field or status
added to the server without regenerating this page fails the suite.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sessionstream.core.settings import Settings
from sessionstream.server.app import create_app
from sessionstream.server.openapi import DOC

REGENERATE = ".venv/bin/python -m sessionstream.cli.http_reference > docs/reference/http.md"
METHODS = ("get", "post", "patch", "put", "delete")
REF = "#/components/schemas/"


def served_document() -> dict[str, Any]:
    """The document as ``GET /api/openapi.json`` serves it with the default settings.

    The app is assembled (routes, limits, descriptions) but never started, so no
    store is opened and nothing is written.
    """
    unused = Path(tempfile.gettempdir()) / "sessionstream-reference-unused.db"
    app = create_app(Settings(db_path=str(unused), secret="r" * 32))
    document: dict[str, Any] = app[DOC]
    return document


def _cell(text: str) -> str:
    """Markdown table cells cannot hold pipes or line breaks."""
    return " ".join(text.split()).replace("|", "\\|")


def type_of(schema: dict[str, Any]) -> str:
    """A schema as a reader says it: ``string (uuid)``, ``array of [Message](#message)``."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF)
        return f"[{name}](#{name.lower()})"
    for union in ("anyOf", "oneOf"):
        if union in schema:
            kinds = [type_of(branch) for branch in schema[union]]
            nullable = "null" in kinds
            named = " or ".join(dict.fromkeys(k for k in kinds if k != "null")) or "null"
            return f"{named}, nullable" if nullable else named
    kind = schema.get("type")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind is None:
        return "object" if "properties" in schema else "any"
    text = str(kind)
    if "format" in schema:
        text += f" ({schema['format']})"
    if "enum" in schema:
        text += ": " + ", ".join(f"`{value}`" for value in schema["enum"])
    return text


def bounds(schema: dict[str, Any]) -> str:
    """The limits a value must keep; 4xx beyond them.

    A pattern that only spells out a named format (a UUID's) would bury the row, so
    the format stands for it.
    """
    found: list[str] = []
    for branch in [schema, *schema.get("anyOf", [])]:
        for key, word in (
            ("minLength", "min length"),
            ("maxLength", "max length"),
            ("minimum", "min"),
            ("maximum", "max"),
            ("minItems", "min items"),
            ("maxItems", "max items"),
            ("pattern", "pattern"),
        ):
            if key in branch and not (key == "pattern" and "format" in branch):
                value = f"`{branch[key]}`" if key == "pattern" else str(branch[key])
                found.append(f"{word} {value}")
    return "; ".join(found)


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def _parameters(op: dict[str, Any]) -> list[str]:
    params = op.get("parameters", [])
    if not params:
        return []
    lines = [
        "| parameter | in | required | type | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for param in params:
        schema = param.get("schema", {})
        limits = bounds(schema)
        described = _cell(param.get("description", ""))
        if limits:
            described = f"{described} ({limits})" if described else limits
        lines.append(
            f"| `{param['name']}` | {param['in']} | {'yes' if param.get('required') else 'no'}"
            f" | {type_of(schema)} | {_cell(described)} |"
        )
    return [*lines, ""]


def _responses(op: dict[str, Any]) -> list[str]:
    lines = ["| status | meaning | body | headers |", "| --- | --- | --- | --- |"]
    for status, response in sorted(op["responses"].items()):
        content = response.get("content", {})
        body = ", ".join(
            f"{type_of(media.get('schema', {}))} (`{kind}`)" for kind, media in content.items()
        )
        headers = ", ".join(f"`{name}`" for name in response.get("headers", {}))
        lines.append(f"| {status} | {_cell(response['description'])} | {body} | {headers} |")
    return [*lines, ""]


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    lines = [f"### {op['summary']}", "", f"`{method.upper()} {path}` · `{op['operationId']}`", ""]
    if op.get("description"):
        lines += [op["description"], ""]
    lines += _parameters(op)
    body = op.get("requestBody")
    if body:
        for kind, media in body["content"].items():
            lines += [f"Request body (`{kind}`): {type_of(media['schema'])}.", ""]
    lines += _responses(op)
    links = op["responses"].get(next(iter(op["responses"])), {}).get("links", {})
    if links:
        follow = ", ".join(f"`{link['operationId']}`" for link in links.values())
        lines += [f"Its response links to: {follow}.", ""]
    return lines


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [_cell(schema["description"]), ""]
    properties: dict[str, Any] = schema.get("properties", {})
    if not properties:
        return [*lines, f"Type: {type_of(schema)}.", ""]
    required = set(schema.get("required", []))
    lines += ["| field | type | required | notes |", "| --- | --- | --- | --- |"]
    for field, spec in properties.items():
        notes = "; ".join(
            part for part in (_cell(spec.get("description", "")), bounds(spec)) if part
        )
        lines.append(
            f"| `{field}` | {type_of(spec)} | {'yes' if field in required else 'no'}"
            f" | {_cell(notes)} |"
        )
    if schema.get("additionalProperties") is False:
        lines += ["", "Unknown fields are refused (400)."]
    return [*lines, ""]


def markdown(document: dict[str, Any] | None = None) -> str:
    """The whole page; ``document`` defaults to the one the server serves."""
    doc = document if document is not None else served_document()
    lines = [
        "# HTTP reference",
        "",
        f"<!-- Generated from the OpenAPI document by `{REGENERATE}`;",
        "     edit server/openapi.py and server/openapi_text.py, not this file. -->",
        "",
        f"{doc['info']['description']} This page is generated from the OpenAPI "
        f"{doc['openapi']} document the server serves at `GET /api/openapi.json`; the "
        "[API overview](api.md) explains the ideas behind it, and the streaming "
        "channels, which OpenAPI does not describe, are in the "
        "[realtime guide](../guides/realtime.md).",
        "",
        "Every operation needs `Authorization: Bearer <token>`. Every error body is an "
        "[ErrorEnvelope](#errorenvelope).",
        "",
    ]
    operations = list(_operations(doc))
    for tag in doc.get("tags", []):
        lines += [f"## {tag['name'].capitalize()}", "", tag["description"], ""]
        for method, path, op in operations:
            if tag["name"] in op.get("tags", []):
                lines += _operation(method, path, op)
    lines += ["## Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        lines += _schema(name, schema)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
