"""The documented typical flow, over HTTP only, with the default offline engine.

:func:`documented_flow` takes any aiohttp client (the test client here, a
``ClientSession`` through nginx in ``tests/test_nginx.py``), so the flow a
deployment serves is checked by the same steps.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from tests.conftest import Api

S = "/api/campaigns/ai-chat-sessions"
LEADS: list[dict[str, Any]] = [
    {
        "id": "lead-1",
        "first_name": "Dana",
        "last_name": "Kim",
        "company": "Northwind",
        "position": "VP of Sales",
        "custom_fields": {"industry": "logistics"},
    },
    {
        "id": "lead-2",
        "first_name": "Luis",
        "last_name": "Ortega",
        "company": "Globex",
        "position": "Head of Revenue",
    },
    {
        "lead_id": "lead-3",
        "first_name": "Priya",
        "last_name": "Shah",
        "company": "Initech",
        "position": "CRO",
    },
]


@dataclass(frozen=True)
class Caller:
    """An aiohttp client (``TestClient`` or ``ClientSession`` with a ``base_url``) and the
    owner's headers."""

    client: Any
    headers: dict[str, str]


async def poll_idle(api: Caller, sid: str) -> dict[str, Any]:
    """The documented client: poll GET until task_status returns to null."""
    for _ in range(2000):
        r = await api.client.get(f"{S}/{sid}", headers=api.headers)
        row: dict[str, Any] = (await r.json())["session"]
        if row["task_status"] is None:
            return row
        await asyncio.sleep(0.01)
    raise AssertionError("task_status never returned to null")


async def turn(api: Caller, sid: str, message: str) -> dict[str, Any]:
    r = await api.client.post(
        f"{S}/{sid}/turn",
        json={
            "message": message,
            "availableVarNames": ["first_name", "company", "position"],
            "sampleLeads": [{k: v for k, v in lead.items() if k != "id"} for lead in LEADS],
            "sequenceContext": {"position": 1, "total_nodes": 3, "prior_nodes": []},
        },
        headers=api.headers,
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["runId"].startswith("run_") and body["publicAccessToken"]
    return await poll_idle(api, sid)


async def test_documented_typical_flow(api: Api) -> None:
    session = await api.session()
    await documented_flow(Caller(api.client, api.h()), session["id"])


async def documented_flow(api: Caller, sid: str) -> None:
    """Three turns to a draft, then two batches of examples, on session ``sid``."""
    row = await turn(
        api, sid, "Write an intro email for enterprise VPs of Sales, emphasizing time-to-ROI"
    )
    assert row["skeleton"] is None, "turn 1 asks clarifying questions and sets no skeleton"
    assert row["messages"][-1]["role"] == "assistant"
    assert "?" in row["messages"][-1]["content"]

    await turn(
        api,
        sid,
        "We are Acme Analytics. Proof: customers cut reporting time by 40%. "
        "CTA: a 15 minute call. Tone: friendly but professional.",
    )
    row = await turn(api, sid, "Looks good, go ahead and draft it")
    assert row["skeleton"] is not None, "converges on a skeleton within 2-4 turns"
    assert row["draft_subject"] and row["draft_body"]
    assert row["framework_version"] >= 1
    assert len(row["messages"]) == 6
    # only allowed variables are emitted
    used = set(re.findall(r"%([a-z_]+)%", row["draft_subject"] + row["draft_body"]))
    assert used <= {"first_name", "company", "position"}, used

    r = await api.client.post(
        f"{S}/{sid}/generate-examples",
        json={"leads": LEADS, "isFirstBatch": True},
        headers=api.headers,
    )
    assert r.status == 200, await r.text()
    row = await poll_idle(api, sid)
    examples = row["generated_examples"]
    assert [e["lead_id"] for e in examples] == ["lead-1", "lead-2", "lead-3"]
    for example, lead in zip(examples, LEADS, strict=True):
        text = example["subject"] + example["body"]
        assert lead["first_name"] in text, (lead["first_name"], text)
        assert not re.search(r"%[a-z_]+%|\{\{|&&", text), text
    # later batches append
    r = await api.client.post(
        f"{S}/{sid}/generate-examples",
        json={"leads": [{"id": "lead-4", "first_name": "Mo"}], "isFirstBatch": False},
        headers=api.headers,
    )
    assert r.status == 200
    row = await poll_idle(api, sid)
    assert [e["lead_id"] for e in row["generated_examples"]][-1] == "lead-4"
    assert len(row["generated_examples"]) == 4
