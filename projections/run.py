"""The run projection: one row per run, folded from its ``run-<id>`` stream.

The run stream's version is the run's ``seq``; its events are the
``ChatStreamEvent`` types clients see.
"""

from __future__ import annotations

from typing import cast

from sessionstream.core.readmodels import ExamplesOutput, RunRow, RunStatus, TurnOutput
from sessionstream.core.vocabulary import RUN_PREFIX, STATUS_AFTER, TERMINAL, EventType
from sessionstream.eventstore.model import DocIndex, RecordedEvent
from sessionstream.projections.streams import PerStream

PREFIX = RUN_PREFIX


def apply_run(state: RunRow | None, event: RecordedEvent) -> RunRow | None:
    data, at = event.data, event.recorded_at
    if event.type == EventType.RUN_CREATED:
        return {
            "id": data["run_id"],
            "kind": data["kind"],
            "session_id": data["session_id"],
            "user_id": data["user_id"],
            "status": "queued",
            "created_at": at,
            "started_at": None,
            "finished_at": None,
            "updated_at": at,
            "error": None,
            "seq": event.version,
            "progress": None,
            "output": None,
        }
    if state is None:
        return None
    new = state.copy()
    new["seq"] = event.version
    new["updated_at"] = at
    if state["status"] in ("completed", "failed", "canceled"):
        return new  # nothing after a terminal event changes the outcome
    if event.type == EventType.RUN_STARTED:
        new["status"] = "running"
        new["started_at"] = at
    elif event.type == EventType.EXAMPLES_PROGRESS:
        new["progress"] = {"done": data.get("done"), "total": data.get("total")}
    elif event.type in TERMINAL:
        new["status"] = cast(RunStatus, STATUS_AFTER[event.type])
        new["finished_at"] = at
        if event.type == EventType.RUN_FAILED:
            new["error"] = data.get("error")
        if event.type == EventType.RUN_COMPLETED:
            new["output"] = cast("TurnOutput | ExamplesOutput | None", data.get("output"))
    return new


class RunProjection(PerStream[RunRow]):
    prefix = PREFIX
    kind = "run"
    version = 1

    def evolve(self, state: RunRow | None, event: RecordedEvent) -> RunRow | None:
        return apply_run(state, event)

    #: a finished run's document is folded from its stream when read, not kept
    keeps_every_doc = False

    def columns(self, state: RunRow) -> DocIndex:
        live = state["status"] in ("queued", "running")
        # once the run has ended its stream no longer changes, so its events (a row and a
        # pack) are the document already: a kept copy, its output repeating the reply,
        # and its two index entries were 1.2 KB of the 10.4 KB a chat turn kept on disk
        # (docs/explanation/scale.md)
        return DocIndex(
            owner=state["user_id"],
            parent=state["session_id"],
            created_at=state["created_at"],
            active=live,
            kept=live,
        )
