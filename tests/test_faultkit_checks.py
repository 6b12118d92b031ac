"""The fault suite's checks find what they are for: each is shown a log with the defect."""

from __future__ import annotations

from typing import Any

from sessionstream.eventstore.model import RecordedEvent
from sessionstream.server.frames import chat_stream_event
from tests.faultkit import checks
from tests.faultkit.load import AckedTurn
from tests.torture.harness import AckedPatch

RUN = {"actor": {"type": "run", "id": "r1"}, "session_id": "s1"}
SYSTEM = {"actor": {"type": "system", "id": "recovery"}}


def log(*events: tuple[str, str, dict[str, Any], dict[str, Any]]) -> list[RecordedEvent]:
    """Events in order, each ``(stream, type, data, metadata)``, versions counted per stream."""
    versions: dict[str, int] = {}
    out = []
    for position, (stream, type_, data, meta) in enumerate(events, 1):
        versions[stream] = versions.get(stream, 0) + 1
        corr = "session-s1" if stream.startswith("run-") else None
        out.append(
            RecordedEvent(
                position, stream, versions[stream], f"e{position}", type_, data, meta, corr,
                "2026-01-01T00:00:00.000Z", "h",
            )
        )  # fmt: skip
    return out


def a_run(end: str = "run.completed") -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    return [
        ("session-s1", "run.claimed", {"run_id": "r1", "kind": "turn", "task_status": "x"}, RUN),
        ("run-r1", "run.created", {}, RUN),
        ("run-r1", "message.delta", {"text": "a"}, RUN),
        ("run-r1", end, {}, RUN),
        ("session-s1", "message.appended", {"role": "assistant", "content": "a"}, RUN),
        ("session-s1", "run.released", {"run_id": "r1", "outcome": end}, RUN),
    ]


def test_a_clean_run_passes_every_check() -> None:
    events = log(*a_run())
    assert checks.writes_after_end(events) == []
    assert checks.duplicate_terminals(events) == []
    assert checks.shape_errors(events) == []


def test_writes_after_the_end_are_found() -> None:
    late_delta = log(*a_run("run.failed"), ("run-r1", "message.delta", {"text": "b"}, RUN))
    assert len(checks.writes_after_end(late_delta)) == 1
    late_result = log(*a_run(), ("session-s1", "message.appended", {"role": "a"}, RUN))
    assert len(checks.writes_after_end(late_result)) == 1
    released_twice = log(*a_run(), ("session-s1", "run.released", {"run_id": "r1"}, SYSTEM))
    assert len(checks.writes_after_end(released_twice)) == 1
    ended_twice = log(*a_run(), ("run-r1", "run.failed", {}, SYSTEM))
    assert len(checks.duplicate_terminals(ended_twice)) == 1


def test_lost_acknowledgements_and_bad_shapes_are_found() -> None:
    events = log(("session-s1", "session.patched", {"fields": {"title": "kept"}}, SYSTEM), *a_run())
    patches = [AckedPatch("s1", "kept", 1), AckedPatch("s1", "lost", 2)]
    turns = [AckedTurn("s1", "r1", "t", 0), AckedTurn("s1", "r2", "t", 0)]
    assert len(checks.acked_lost(events, patches, turns)) == 2
    events[2] = events[3]
    assert checks.shape_errors(events)


def test_frames_missed_and_wrong_are_counted() -> None:
    events = log(*a_run())
    frames = [chat_stream_event(e) for e in events]
    assert checks.frame_errors(events, "session-s1", frames) == (0, 0)
    assert checks.frame_errors(events, "session-s1", frames[:2] + frames[3:]) == (1, 0)
    frames[1] = {**frames[1], "type": "message.delta"}
    assert checks.frame_errors(events, "session-s1", frames) == (0, 1)
    assert checks.session_heads(events, ["s1"]) == {"s1": 6}
    run = [f for f in frames if f["runId"] == "r1"]
    assert checks.frame_errors(events, "run-r1", run[1:]) == (1, 0)
