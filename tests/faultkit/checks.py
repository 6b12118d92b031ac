"""What the log on PostgreSQL must show after faults, each as a count the suite prints.

The log is read directly (rows and the finished runs' packed deltas, decoded
by the documented format), never through a node: the checks must not trust
the code under test to report on itself.

- **acknowledged events lost**: a PATCH answered 200 whose title is not in
  its session's stream, or a turn answered with a run id whose run stream
  has no ``run.created``.
- **writes after a lost lease**: events of a run after its end. A run's
  writer appends at an exact ``seq``, and its end (terminal event, results,
  ``run.released``) is one transaction, so anything a run wrote later (an
  event of its stream past the terminal one, or a session event with the
  run as actor after the session released it) came from a node that no
  longer owned it.
- **duplicate terminal events**: more than one end in a run stream.
- **log shape**: positions gapless, event ids unique, versions 1..n.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import asyncpg

from sessionstream.eventstore.model import RecordedEvent
from sessionstream.eventstore.packing import unpack_all
from sessionstream.server.frames import chat_stream_event
from tests.faultkit.load import AckedTurn
from tests.pg import DSN
from tests.torture.harness import TERMINAL, AckedPatch

ACTIVE = ("queued", "running")


async def connect(schema: str) -> Any:
    """A connection of the checks' own; a server full of other tests' clients is waited for."""
    for _ in range(60):
        try:
            return await asyncpg.connect(DSN, server_settings={"search_path": schema}, timeout=10)
        except asyncpg.TooManyConnectionsError:
            await asyncio.sleep(0.5)
    return await asyncpg.connect(DSN, server_settings={"search_path": schema}, timeout=10)


async def read_log(schema: str) -> list[RecordedEvent]:
    """Every event of the schema's log in position order, packed deltas included."""
    conn = await connect(schema)
    try:
        # one snapshot: a compaction committing between two reads would show its events
        # both as rows and in its packs
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(
                "SELECT position, stream_id, version, event_id, type, data, metadata, "
                "correlation_id, recorded_at, hash FROM events"
            )
            packs = await conn.fetch("SELECT stream_id, correlation_id, body FROM packs")
    finally:
        await conn.close()
    events = [
        RecordedEvent(
            r["position"],
            r["stream_id"],
            r["version"],
            r["event_id"],
            r["type"],
            json.loads(r["data"]),
            json.loads(r["metadata"]),
            r["correlation_id"],
            r["recorded_at"],
            r["hash"],
        )
        for r in rows
    ]
    events += unpack_all((p["stream_id"], p["correlation_id"], p["body"]) for p in packs)
    return sorted(events, key=lambda e: e.position)


async def read_docs(schema: str, kind: str) -> dict[str, dict[str, Any]]:
    conn = await connect(schema)
    try:
        rows = await conn.fetch("SELECT key, body FROM docs WHERE kind = $1", kind)
    finally:
        await conn.close()
    return {r["key"]: json.loads(r["body"]) for r in rows}


def shape_errors(log: list[RecordedEvent]) -> list[str]:
    errors = []
    if [e.position for e in log] != list(range(1, len(log) + 1)):
        errors.append("positions have a gap or a repeat")
    if len({e.event_id for e in log}) != len(log):
        errors.append("an event id is stored twice")
    versions: dict[str, int] = {}
    for e in log:
        if e.version != versions.get(e.stream_id, 0) + 1:
            errors.append(f"{e.stream_id} jumps to version {e.version}")
        versions[e.stream_id] = e.version
    return errors


def acked_lost(
    log: list[RecordedEvent], patches: Iterable[AckedPatch], turns: Iterable[AckedTurn]
) -> list[str]:
    titles = {
        (e.stream_id, e.data["fields"]["title"])
        for e in log
        if e.type == "session.patched" and "title" in e.data.get("fields", {})
    }
    created = {e.stream_id for e in log if e.type == "run.created"}
    lost = [f"PATCH {p}" for p in patches if (f"session-{p.session_id}", p.title) not in titles]
    lost += [f"turn {t}" for t in turns if f"run-{t.run_id}" not in created]
    return lost


def duplicate_terminals(log: list[RecordedEvent]) -> list[str]:
    ends: dict[str, int] = defaultdict(int)
    for e in log:
        if e.type in TERMINAL:
            ends[e.stream_id] += 1
    return [f"{stream} ends {n} times" for stream, n in ends.items() if n > 1]


def writes_after_end(log: list[RecordedEvent]) -> list[str]:
    """Events a run wrote after its end: see the module's docstring."""
    ended: set[str] = set()  # run streams whose terminal event is in
    released: set[str] = set()  # runs whose session was released
    stale = []
    for e in log:
        actor = e.metadata.get("actor")
        run_id = actor.get("id") if isinstance(actor, dict) and actor["type"] == "run" else None
        if e.stream_id.startswith("run-"):
            if e.stream_id in ended:
                stale.append(f"{e.type} at {e.position} after the end of {e.stream_id}")
            if e.type in TERMINAL:
                ended.add(e.stream_id)
        elif e.type == "run.released":
            if e.data.get("run_id") in released:
                stale.append(
                    f"a second run.released of {e.data.get('run_id')} at {e.position} "
                    f"by {e.metadata.get('actor')}"
                )
            released.add(str(e.data.get("run_id")))
        elif run_id is not None and run_id in released:
            stale.append(f"{e.type} at {e.position} by run {run_id} after its release")
    return stale


def busy(sessions: dict[str, dict[str, Any]], runs: dict[str, dict[str, Any]]) -> list[str]:
    """Sessions whose ``task_status`` is still set, runs still without an end."""
    stuck = [
        f"session {k}: {v['row']['task_status']}"
        for k, v in sessions.items()
        if v["row"]["task_status"]
    ]
    stuck += [f"run {k}: {v['status']}" for k, v in runs.items() if v["status"] in ACTIVE]
    return stuck


def frame_errors(
    log: list[RecordedEvent], stream: str, frames: list[dict[str, Any]]
) -> tuple[int, int]:
    """(missed, wrong) for a subscriber of ``stream`` (``session-<id>``: the session's and its
    runs' events; ``run-<id>``: the run's): events it should have had and did not, and
    frames that differ from the event stored at their position."""
    expected = {
        e.position: json.loads(json.dumps(chat_stream_event(e))) for e in log if stream in e.keys
    }
    got = {f["position"]: f for f in frames}
    missed = sum(1 for position in expected if position not in got)
    wrong = sum(1 for position, f in got.items() if expected.get(position) != f)
    return missed, wrong


def session_heads(log: list[RecordedEvent], sids: Iterable[str]) -> dict[str, int]:
    """The last position each session's channel carries."""
    heads = dict.fromkeys(sids, 0)
    for e in log:
        for key in e.keys:
            if key.startswith("session-") and key[8:] in heads:
                heads[key[8:]] = e.position
    return heads
