"""The failover test's arithmetic on made-up records: each figure counts what it claims to.

The failover test itself needs root and pg_auto_failover and takes minutes;
these check, in milliseconds, that a lost write, a 500, a second release or a
subscriber's phantom frame would show in its figures, so a zero there means
nothing happened rather than nothing was looked at.
"""

from __future__ import annotations

from typing import Any

from tests.failover.figures import Event, Fault, Log, figures, subscriber_problems
from tests.failover.traffic import Answer, Followers, Record, TimedPatch
from tests.torture.harness import AckedPatch, AckedTurn, Row

T0 = 1_000_000.0


def event(position: int, stream: str, version: int, type_: str, at: float, **data: Any) -> Event:
    corr = None if stream.startswith("session-") else "session-s1"
    return Event(Row(position, stream, version, f"e{position}", type_, data, corr), at)


def patched(position: int, version: int, title: str, at: float) -> Event:
    return event(position, "session-s1", version, "session.patched", at, fields={"title": title})


def faults() -> list[Fault]:
    planned = Fault("planned failover", "node1", "node2", T0 + 10, T0 + 12, T0 + 12.5)
    stopped = Fault("primary stopped", "node2", "node1", T0 + 20, T0 + 27, None, ended=T0 + 30)
    planned.ended = stopped.started
    return [planned, stopped]


def test_writes_lost_counted_in_the_window_they_were_acknowledged_in() -> None:
    log = Log([patched(1, 1, "kept", T0 + 1), patched(2, 2, "late", T0 + 11)], {})
    record = Record(
        patches=[
            TimedPatch(AckedPatch("s1", "kept", 1), T0 + 1),
            TimedPatch(AckedPatch("s1", "late", 1), T0 + 11),  # acknowledged before its version
            TimedPatch(AckedPatch("s1", "gone", 3), T0 + 21),  # not in the log at all
        ],
        turns=[AckedTurn("s1", "r9", "tok")],  # no run.created: lost, counted at the end
    )
    steady, planned, stopped = figures(faults(), record, log, T0)
    assert (steady.lost, steady.acked) == (0, 1)
    assert (planned.lost, planned.acked) == (1, 1)
    assert (stopped.lost, stopped.acked) == (2, 1)


def test_every_5xx_counts_503_with_retry_after_too_and_timeouts_apart() -> None:
    answers = [
        Answer(T0 + 10, T0 + 11, 0, "patch", 500, "boom"),
        Answer(T0 + 10, T0 + 11, 0, "patch", 503, "storage_unavailable"),
        Answer(T0 + 10, T0 + 11, 1, "patch", 503, "storage_unavailable (Retry-After: 1)"),
        Answer(T0 + 10, T0 + 25, 1, "read", 0, "client timeout"),
        Answer(T0 + 10, T0 + 11, 1, "read", 200),
    ]
    steady, planned, stopped = figures(faults(), Record(answers=answers), Log([], {}), T0)
    assert (planned.server_errors, planned.no_retry_after, planned.unavailable) == (3, 1, 1)
    assert (planned.answers, planned.client_timeouts) == (4, 0)
    assert (stopped.answers, stopped.client_timeouts) == (1, 1)
    assert steady.answers == 0


def test_seconds_beyond_the_database_own_failover() -> None:
    _, planned, stopped = figures(faults(), Record(), Log([], {}), T0)
    assert planned.db_own_s == 2.0 and planned.beyond_s == 0.5
    assert stopped.db_own_s == 7.0 and stopped.beyond_s is None


def test_failed_turns_and_every_wrong_release_are_counted() -> None:
    log = Log(
        [
            event(1, "run-a", 1, "run.created", T0 + 1),
            event(2, "run-a", 2, "run.completed", T0 + 2),
            event(3, "session-s1", 1, "run.released", T0 + 2, run_id="a", outcome="run.completed"),
            event(4, "run-b", 1, "run.created", T0 + 9),
            event(5, "run-b", 2, "run.completed", T0 + 11),
            event(6, "session-s1", 2, "run.released", T0 + 11, run_id="b", outcome="run.completed"),
            # recovery releasing a completed run a second time, as failed
            event(7, "session-s1", 3, "run.released", T0 + 12, run_id="b", outcome="run.failed"),
            event(8, "run-c", 1, "run.created", T0 + 21),
            event(9, "run-c", 2, "run.failed", T0 + 22, error="lost the connection"),
            event(10, "run-d", 1, "run.created", T0 + 21),
            event(11, "run-d", 2, "run.failed", T0 + 23, error="interrupted"),
            event(12, "session-s1", 4, "run.released", T0 + 23, run_id="d", outcome="run.failed"),
        ],
        {},
    )
    acked = Record(turns=[AckedTurn("s1", r, "tok") for r in ("a", "b", "c")])
    steady, planned, stopped = figures(faults(), acked, log, T0)
    assert (steady.turns_started, steady.turns_failed, steady.bad_releases) == (2, 0, 0)
    assert (planned.turns_failed, planned.bad_releases) == (0, 1)
    assert (stopped.turns_started, stopped.turns_failed, stopped.bad_releases) == (2, 1, 1)
    assert stopped.unacknowledged_ended == 1  # d: its claim committed, its POST failed


def test_a_subscriber_with_a_phantom_or_a_missing_frame_differs_from_the_log() -> None:
    log = Log(
        [
            event(1, "session-s1", 1, "session.created", T0),
            event(2, "run-a", 1, "run.created", T0),
            event(3, "run-a", 2, "run.completed", T0),
        ],
        {},
    )
    good = Followers("http://a", "token", ["s1"])
    good.session_frames["s1"] = [{"position": p, "type": e.row.type} for p, e in zip(
        (1, 2, 3), log.events, strict=True
    )]  # fmt: skip
    good.run_frames["a"] = [{"seq": 1, "type": "run.created"}, {"seq": 2, "type": "run.completed"}]
    assert subscriber_problems(log, [good], ["s1"]) == []

    bad = Followers("http://b", "token", ["s1"])
    bad.session_frames["s1"] = [*good.session_frames["s1"], {"position": 4, "type": "x", "at": 1}]
    bad.run_frames["a"] = [{"seq": 1, "type": "run.created"}]
    bad.refused["r2"] = "after 75 is beyond the run's last event"
    problems = subscriber_problems(log, [bad], ["s1"])
    assert len(problems) == 3
    assert "1 not in the log" in problems[0] and "1 missed" in problems[1]
