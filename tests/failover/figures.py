"""The failover test's figures, per fault, from what clients saw and what the log holds.

Each fault owns a window of wall-clock time, from its injection to the next
fault's (the last one to the end of the load); an answer, an acknowledged
write, a run's end or a release counts in the window it happened in, so a
figure a fault caused late (a release appended by recovery seconds after
storage returned) is still the fault's. Times are the machine's clock: the
database's ``recorded_at`` and the clients' ``time.time()`` agree because
everything runs on one machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from sessionstream.eventstore.packing import unpack_all
from tests.failover.traffic import Followers, Record
from tests.torture.harness import TERMINAL, Row

#: storage unavailable: a 5xx like any other (issue 22 wants none), shown apart with
#: whether it said when to retry
UNAVAILABLE = 503


@dataclass
class Fault:
    name: str
    old_primary: str
    new_primary: str
    started: float
    #: when a direct write to the new primary first committed (the database's own recovery)
    db_writable: float | None = None
    #: the first PATCH sessionstream acknowledged from then on
    ss_writable: float | None = None
    #: sessionstream wrote again only after the fault was repaired (thawed, restarted)
    repaired_first: bool = False
    ended: float = float("inf")

    def holds(self, t: float) -> bool:
        return self.started <= t < self.ended


@dataclass(frozen=True, slots=True)
class Event:
    row: Row
    at: float


@dataclass
class Log:
    events: list[Event]
    docs: dict[str, dict[str, dict[str, Any]]]

    @property
    def rows(self) -> list[Row]:
        return [e.row for e in self.events]


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


async def read_log(dsn: str) -> Log:
    """Every event (rows and packed deltas) and the session and run read models."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        # one snapshot: a compaction committing between the reads would show its events
        # both as rows and in its packs
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(
                "SELECT position, stream_id, version, event_id, type, data, correlation_id, "
                "recorded_at FROM events"
            )
            packs = await conn.fetch("SELECT stream_id, correlation_id, body FROM packs")
            docs = await conn.fetch(
                "SELECT kind, key, body FROM docs WHERE kind IN ('session', 'run')"
            )
    finally:
        await conn.close()
    events = [
        Event(
            Row(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]),
            _epoch(r[7]),
        )
        for r in rows
    ]
    events += [
        Event(
            Row(
                e.position,
                e.stream_id,
                e.version,
                e.event_id,
                e.type,
                dict(e.data),
                e.correlation_id,
            ),
            _epoch(e.recorded_at),
        )
        for e in unpack_all((p[0], p[1], p[2]) for p in packs)
    ]
    events.sort(key=lambda e: e.row.position)
    by_kind: dict[str, dict[str, dict[str, Any]]] = {"session": {}, "run": {}}
    for kind, key, body in docs:
        by_kind[kind][key] = json.loads(body)
    return Log(events, by_kind)


@dataclass
class Figures:
    fault: str
    seconds: float = 0.0
    acked: int = 0
    lost: int = 0
    answers: int = 0
    #: every 5xx answer, 503s with ``Retry-After`` included (issue 22's "5xx answers": 0)
    server_errors: int = 0
    #: of which 503s with ``Retry-After`` (a request that waited out the whole storage wait,
    #: or found too many waiting), and 503s without
    unavailable: int = 0
    no_retry_after: int = 0
    client_timeouts: int = 0
    db_own_s: float | None = None
    beyond_s: float | None = None
    #: from the fault to sessionstream's first write: the storage blip its runs had to wait out
    outage_s: float | None = None
    turns_started: int = 0
    #: acknowledged turns (the client got their run id) that ended ``run.failed``
    turns_failed: int = 0
    #: runs whose claim committed though its POST got an error (an unknown outcome, which a
    #: commit cut off by the fault can have): recovery ends them, as it must
    unacknowledged_ended: int = 0
    bad_releases: int = 0
    notes: list[str] = field(default_factory=list)

    HEADER = (
        "| fault | window | acknowledged writes lost | 5xx answers "
        "| of which 503 with Retry-After | client timeouts | database's own failover "
        "| sessionstream beyond it | turns failed | duplicate or wrong run.released |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )

    def row(self) -> str:
        def secs(value: float | None) -> str:
            return "never" if value is None else f"{value:.1f} s"

        n = self.unacknowledged_ended
        unacked = f" (and {n} never acknowledged)" if n else ""
        return (
            f"| {self.fault} | {self.seconds:.0f} s | {self.lost} of {self.acked} "
            f"| {self.server_errors} | {self.unavailable} "
            f"| {self.client_timeouts} of {self.answers} | {secs(self.db_own_s)} "
            f"| {secs(self.beyond_s)} | {self.turns_failed} of {self.turns_started}{unacked} "
            f"| {self.bad_releases} |"
        )


def figures(faults: list[Fault], record: Record, log: Log, began: float) -> list[Figures]:
    """One ``Figures`` for the load before the first fault ("steady", from ``began``), then
    one per fault. Whatever happened before ``began`` counts as steady, after the end as
    the last fault's."""
    windows = [Fault("steady", "", "", began, ended=faults[0].started), *faults]
    out = [Figures(w.name, seconds=w.ended - w.started) for w in windows]

    def window(t: float) -> Figures:
        for w, f in zip(windows, out, strict=True):
            if w.holds(t):
                return f
        return out[0] if t < began else out[-1]

    for w, f in zip(windows[1:], out[1:], strict=True):
        f.notes.append(f"injected at {datetime.fromtimestamp(w.started).time()}")
        if w.db_writable is not None:
            f.db_own_s = w.db_writable - w.started
            if w.ss_writable is not None:
                f.beyond_s = max(0.0, w.ss_writable - w.db_writable)
                f.outage_s = w.ss_writable - w.started
            if w.repaired_first:
                f.notes.append("sessionstream wrote again only once the old primary was back")
    _answers(record, window)
    _acknowledged(record, log, window)
    _runs(log, window, {turn.run_id for turn in record.turns})
    return out


def _answers(record: Record, window: Any) -> None:
    for answer in record.answers:
        f = window(answer.ended)
        f.answers += 1
        if answer.status == 0:
            timed_out = answer.detail == "client timeout"
            f.client_timeouts += timed_out
            if timed_out and f.client_timeouts <= 3:
                took = answer.ended - answer.started
                f.notes.append(f"{answer.action} on node {answer.node}: no answer in {took:.1f} s")
        elif answer.status >= 500:
            f.server_errors += 1
            if answer.status == UNAVAILABLE:
                with_retry = "Retry-After" in answer.detail
                f.unavailable += with_retry
                f.no_retry_after += not with_retry
            if len(f.notes) < 5:
                f.notes.append(f"{answer.action} -> {answer.status}: {answer.detail[:200]}")


def _acknowledged(record: Record, log: Log, window: Any) -> None:
    """Every acknowledged PATCH in the log exactly once, never at a version past its ETag."""
    titles: dict[tuple[str, str], list[Row]] = {}
    for r in log.rows:
        if r.type == "session.patched" and "title" in r.data.get("fields", {}):
            titles.setdefault((r.stream_id, r.data["fields"]["title"]), []).append(r)
    for timed in record.patches:
        f = window(timed.at)
        f.acked += 1
        found = titles.get((f"session-{timed.ack.session_id}", timed.ack.title), [])
        if len(found) != 1 or found[0].version > timed.ack.etag:
            f.lost += 1
            f.notes.append(f"acknowledged PATCH {timed.ack} is in the log {len(found)} times")
    created = {r.stream_id for r in log.rows if r.type == "run.created"}
    for turn in record.turns:
        if f"run-{turn.run_id}" not in created:
            out = window(float("inf"))
            out.lost += 1
            out.notes.append(f"acknowledged turn {turn.run_id} is not in the log")


def _runs(log: Log, window: Any, acknowledged: set[str]) -> None:
    """Turns failed, and releases: exactly one a run, with its terminal event's type."""
    ends: dict[str, Event] = {}
    releases: dict[str, list[Event]] = {}
    for e in log.events:
        r = e.row
        if r.type == "run.created":
            window(e.at).turns_started += 1
        elif r.type in TERMINAL and r.stream_id.startswith("run-"):
            ends[r.stream_id[4:]] = e
            if r.type == "run.failed":
                f = window(e.at)
                run_id = r.stream_id[4:]
                if run_id in acknowledged:
                    f.turns_failed += 1
                    f.notes.append(f"run {run_id} failed: {r.data.get('error')}")
                else:
                    f.unacknowledged_ended += 1
                    f.notes.append(
                        f"run {run_id}, its turn never acknowledged, failed: {r.data.get('error')}"
                    )
        elif r.type == "run.released":
            releases.setdefault(str(r.data.get("run_id")), []).append(e)
    for run_id, released in releases.items():
        end = ends.get(run_id)
        for e in released:
            wrong = end is None or e.row.data.get("outcome") != end.row.type
            if wrong or e is not released[0]:
                f = window(e.at)
                f.bad_releases += 1
                f.notes.append(
                    f"run {run_id}: release with outcome {e.row.data.get('outcome')} "
                    f"(run ended {end.row.type if end else 'never'}), {len(released)} releases"
                )
    for run_id, end in ends.items():
        if run_id not in releases:
            f = window(end.at)
            f.bad_releases += 1
            f.notes.append(f"run {run_id} ended {end.row.type} but was never released")


def subscriber_problems(log: Log, followers: list[Followers], sessions: list[str]) -> list[str]:
    """How each subscription differs from the log: it must hold exactly the log's events for
    what it followed, once each, in order (and no event the log does not have)."""
    problems: list[str] = []
    rows = log.rows
    for subs in followers:
        for sid in sessions:
            key = f"session-{sid}"
            logged = [(r.position, r.type) for r in rows if key in (r.stream_id, r.correlation_id)]
            frames = subs.session_frames[sid]
            got = [(f["position"], f["type"]) for f in frames]
            problems += _differ(f"session {sid} on {subs.base_url}", got, logged, frames)
        for run_id, frames in subs.run_frames.items():
            logged = [(r.version, r.type) for r in rows if r.stream_id == f"run-{run_id}"]
            got = [(f["seq"], f["type"]) for f in frames]
            problems += _differ(f"run {run_id} on {subs.base_url}", got, logged, frames)
        problems += [f"{what} refused: {why}" for what, why in subs.refused.items()]
    return problems


def _differ(
    what: str,
    got: list[tuple[int, str]],
    logged: list[tuple[int, str]],
    frames: list[dict[str, Any]],
) -> list[str]:
    if got == logged:
        return []
    phantom = [g for g in got if g not in set(logged)]
    stamps = [str(f.get("at")) for f, g in zip(frames, got, strict=True) if g in set(phantom)]
    missed = [e for e in logged if e not in set(got)]
    first = next((i for i, (g, e) in enumerate(zip(got, logged, strict=False)) if g != e), None)
    return [
        f"{what}: {len(got)} frames for {len(logged)} logged events; {len(phantom)} not in the "
        f"log (first {phantom[:3]}, recorded at {stamps[:1]}), {len(missed)} missed "
        f"(first {missed[:3]}), first difference at frame {first}"
    ]


def delivered(followers: list[Followers]) -> int:
    return sum(
        sum(map(len, s.session_frames.values())) + sum(map(len, s.run_frames.values()))
        for s in followers
    )
