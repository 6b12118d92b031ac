"""Fork and diff over HTTP, and the log's proofs: ownership, a fork taken mid-run."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

from sessionstream.eventstore.checkpoint import Verifier
from sessionstream.server.keys import STORE
from sessionstream.server.proofs import SIGNER
from tests.conftest import Api
from tests.contract.test_log_tree import rfc_verify_consistency, rfc_verify_inclusion
from tests.test_history import RevisingEngine, S, all_events, idle, turn


async def as_of(api: Api, sid: str, position: int) -> dict[str, Any]:
    r = await api.client.get(f"{S}/{sid}", params={"as_of": position}, headers=api.h())
    assert r.status == 200, await r.text()
    row: dict[str, Any] = (await r.json())["session"]
    return row


CONTENT = ("title", "messages", "draft_subject", "draft_body", "skeleton", "skeleton_history",
           "draft_history", "framework_version", "generated_examples")  # fmt: skip


async def test_fork_from_a_position_and_from_a_version(make_api: Any) -> None:
    gate = asyncio.Event()
    gate.set()
    api: Api = await make_api(engine=RevisingEngine(words=2, gate=gate))
    sid = (await api.session())["id"]
    await turn(api, sid, "first")
    events = await all_events(api, sid)
    middle = max(e["position"] for e in events)
    await turn(api, sid, "second")
    source_before = await api.client.get(f"{S}/{sid}", headers=api.h())
    etag = source_before.headers["ETag"]

    r = await api.client.post(f"{S}/{sid}/fork", json={"position": middle}, headers=api.h())
    assert r.status == 201, await r.text()
    fork = (await r.json())["session"]
    expected = await as_of(api, sid, middle)
    assert {k: fork[k] for k in CONTENT} == {k: expected[k] for k in CONTENT}
    assert fork["id"] != sid and fork["user_id"] == api.user_a
    assert fork["forked_from"] == {"session_id": sid, "position": middle}
    assert fork["task_status"] is None
    # the fork's history says where it came from; the source did not move
    (first,) = await all_events(api, fork["id"])
    assert first["type"] == "session.forked"
    assert first["data"]["forked_from"] == {"session_id": sid, "position": middle}
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    assert r.headers["ETag"] == etag
    # the two directions go on separately
    await turn(api, fork["id"], "elsewhere")
    r = await api.client.get(f"{S}/{fork['id']}", headers=api.h())
    assert (await r.json())["session"]["framework_version"] == 2

    r = await api.client.post(f"{S}/{sid}/fork", json={"version": 1}, headers=api.h())
    assert r.status == 201
    assert (await r.json())["session"]["messages"] in (None, [])
    for body in ({}, {"position": 1, "version": 1}, {"position": 0}, {"version": "x"}):
        r = await api.client.post(f"{S}/{sid}/fork", json=body, headers=api.h())
        assert r.status == 400, body
    r = await api.client.post(f"{S}/{sid}/fork", json={"version": 999}, headers=api.h())
    assert r.status == 404


async def test_fork_and_diff_of_another_users_session_are_404(make_api: Any) -> None:
    api: Api = await make_api(engine=RevisingEngine(words=2))
    sid = (await api.session())["id"]
    await turn(api, sid)
    other = api.h(api.token_b)
    r = await api.client.post(f"{S}/{sid}/fork", json={"version": 1}, headers=other)
    assert r.status == 404
    r = await api.client.get(f"{S}/{sid}/diff", params={"from": 1, "to": 2}, headers=other)
    assert r.status == 404
    r = await api.client.get(f"{S}/{sid}/diff", params={"from": 1, "to": 2}, headers=api.h())
    assert r.status == 200


async def test_a_fork_taken_mid_run_neither_waits_nor_copies_the_run(make_api: Any) -> None:
    gate = asyncio.Event()
    gate.set()
    api: Api = await make_api(engine=RevisingEngine(words=2, gate=gate))
    sid = (await api.session())["id"]
    await turn(api, sid)
    gate.clear()  # the next run holds the session until the gate opens
    r = await api.client.post(f"{S}/{sid}/turn", json={"message": "slow"}, headers=api.h())
    assert r.status == 200
    position = max(e["position"] for e in await all_events(api, sid))
    r = await asyncio.wait_for(
        api.client.post(f"{S}/{sid}/fork", json={"position": position}, headers=api.h()), 5
    )
    assert r.status == 201, await r.text()
    fork = (await r.json())["session"]
    assert fork["task_status"] is None
    assert fork["framework_version"] == 1  # the running turn's revision is not in it
    r = await api.client.get(f"{S}/{sid}", headers=api.h())
    assert (await r.json())["session"]["task_status"] is not None  # the source still runs
    gate.set()
    row = await idle(api, sid)
    assert row["framework_version"] == 2


async def test_diff_between_two_versions(make_api: Any) -> None:
    api: Api = await make_api(engine=RevisingEngine(words=2))
    sid = (await api.session())["id"]
    await turn(api, sid, "one")
    mark = len([e for e in await all_events(api, sid) if e["stream_id"] == f"session-{sid}"])
    await turn(api, sid, "two")
    last = len([e for e in await all_events(api, sid) if e["stream_id"] == f"session-{sid}"])
    r = await api.client.get(f"{S}/{sid}/diff", params={"from": mark, "to": last}, headers=api.h())
    assert r.status == 200, await r.text()
    diff = await r.json()
    assert diff["from"] == mark and diff["to"] == last
    assert {"field": "hook", "before": "hook 1", "after": "hook 2"} in diff["skeleton"]
    assert "-Subject 1 for %first_name%" in diff["draft_subject"]
    assert "+Subject 2 for %first_name%" in diff["draft_subject"]
    assert "+Body 2 for %company%" in diff["draft_body"]
    added = [m["content"] for m in diff["messages_added"] if m.get("role") == "user"]
    assert added == ["two"]
    r = await api.client.get(f"{S}/{sid}/diff", params={"from": 3, "to": 2}, headers=api.h())
    assert r.status == 400


async def test_checkpoint_and_proofs_over_http(api: Api) -> None:
    sid = (await api.session())["id"]
    r = await api.client.get("/api/log/checkpoint", headers=api.h())
    assert r.status == 200, await r.text()
    note = await r.text()
    cp = Verifier.from_vkey(api.app[SIGNER].vkey()).open(note)
    store = api.app[STORE]
    events = await store.read_all(0, limit=10_000)
    mine = next(e for e in events if e.stream_id == f"session-{sid}")
    if mine.position > cp.size:  # recorded at start-up: ask for a fresh one
        from sessionstream.services.proofs import record_checkpoint

        cp = Verifier.from_vkey(api.app[SIGNER].vkey()).open(
            (await record_checkpoint(store, api.app[SIGNER])).note
        )
    r = await api.client.get(
        "/api/log/inclusion", params={"position": mine.position, "size": cp.size}, headers=api.h()
    )
    assert r.status == 200, await r.text()
    proof = await r.json()
    assert set(proof) == {"position", "leaf_index", "tree_size", "leaf_hash", "hashes"}
    path = [base64.b64decode(h) for h in proof["hashes"]]
    leaf = hashlib.sha256(b"\x00" + bytes.fromhex(mine.hash)).digest()
    assert rfc_verify_inclusion(mine.position - 1, cp.size, leaf, path, cp.root)
    # someone else's position is not found, whatever it holds
    r = await api.client.get(
        "/api/log/inclusion", params={"position": mine.position}, headers=api.h(api.token_b)
    )
    assert r.status == 404
    # consistency between two checkpoints
    await api.session()
    from sessionstream.services.proofs import record_checkpoint

    later = Verifier.from_vkey(api.app[SIGNER].vkey()).open(
        (await record_checkpoint(store, api.app[SIGNER])).note
    )
    r = await api.client.get(
        "/api/log/consistency",
        params={"first": cp.size, "second": later.size},
        headers=api.h(),
    )
    assert r.status == 200, await r.text()
    hashes = [base64.b64decode(h) for h in (await r.json())["hashes"]]
    assert rfc_verify_consistency(cp.size, later.size, cp.root, later.root, hashes)
