"""Compaction's decisions: which streams a committed batch lets compaction pack, what
compacting one rewrites and chains onto, and which runs' packs a retried append's ids
are looked up in.

Apart from ``eventstore/packing.py`` because that module is the pack *format*:
what a pack holds and how it reads back as exactly the events it replaced,
whatever decided to write it, and it must go on reading every pack ever
written (formats 1 to 4). This one is *policy*: when a stream is packed and
how much of it is written again. The policy has changed (runs packed once as
they end; then sessions packed again at each turn's end; then only a
session's tail) while format 4 stayed as it was. Both backends decide with
these functions and only run the SQL (``sqlite/packs.py``,
``postgres/packs.py``).

A run is compacted once, as it ends (its terminal event, :func:`to_compact`).
A session's stream is packed at the end of each turn (its ``run.released``)
and goes on after it, so it is compacted again and again (:func:`repacked`):
each compaction reads back its packs of the blocks from its first row's on
(:func:`tail_from`), merges them with the rows appended since and writes them
anew (:func:`compaction`), chained onto the last event of the pack before
them (:func:`last_anchor`). The work grows with the blocks a session's recent
turns touch, never with the log, nor with the session's older turns.

An append retried after its answer was lost must still be answered as the
retry it is, so the writers look a retried batch's ids up in the packs too
(:func:`runs_to_unpack`): in the runs its rows answered for (a run's ending,
retried: its terminal event is a row, its ``message.completed`` packed) and in
the runs its requests append to (a claim retried with an ``Idempotency-Key``,
``services/claims.py``: ``run.claimed`` is a row of the session stream, and
``run.created``, appended again at version 0 with the same id, is packed).
Both only on the rare path where a writer asks about ids at all (a retry, a
conflict), so an append that is no retry reads nothing more.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from sessionstream.core.vocabulary import RUN_PREFIX, SESSION_PREFIX, TERMINAL, EventType
from sessionstream.eventstore.batch import storable
from sessionstream.eventstore.model import GENESIS_HASH, AppendRequest, RecordedEvent
from sessionstream.eventstore.packing import (
    READABLE,
    Pack,
    block_of,
    may_hold_packs,
    pack_stream,
    packed_of,
    read_body,
)


def to_compact(records: Iterable[RecordedEvent]) -> list[str]:
    """The streams a batch lets compaction pack once it commits: each run it ended (its
    terminal event) and each session whose turn it ended (``run.released``)."""
    found: dict[str, None] = {}
    for r in records:
        if r.type in TERMINAL and r.stream_id.startswith(RUN_PREFIX):
            found[r.stream_id] = None
        elif r.type == EventType.RUN_RELEASED and r.stream_id.startswith(SESSION_PREFIX):
            found[r.stream_id] = None
    return list(found)


def repacked(stream_id: str) -> bool:
    """Whether compaction packs this stream again and again (a session, at each turn's
    end: its packs are read, merged with its rows and written anew) or once (a run,
    when it ends; one packed by an older format stays as it is)."""
    return stream_id.startswith(SESSION_PREFIX)


def compaction(
    rows: Sequence[RecordedEvent],
    packed: Sequence[RecordedEvent],
    before: tuple[int, str] = (0, GENESIS_HASH),
) -> tuple[list[Pack], list[RecordedEvent]]:
    """What compacting a stream writes: the packs that replace its packs, and the rows
    they take in (none, and no packs, when no row would move). ``rows``: the stream's
    stored events; ``packed``: its packed ones (:func:`repacked` streams only), all of
    them or those of the blocks from its first row's on (:func:`tail_from`), ``before``
    then being the version and hash of the event before them (:func:`last_anchor`)."""
    events = sorted([*rows, *packed], key=lambda e: e.version)
    if not events or events[0].version != before[0] + 1:
        return [], []  # not the stream's events from just after ``before``: left as is
    stored = {e.position for e in rows}
    moving = [e for e in packed_of(events) if e.position in stored]
    if not moving:
        return [], []
    return pack_stream(events, before[1]), moving


def tail_from(rows: Sequence[RecordedEvent]) -> int:
    """The first block a session's compaction writes again: its first row's. The packs
    of the blocks before it hold only events before every row, so they stay as they are
    and a long session is not packed again whole at every turn's end."""
    return block_of(rows[0].position) if rows else 0


def last_anchor(body: bytes | None) -> tuple[int, str]:
    """The version and hash of a stored pack's last event (its last segment's digest):
    what the events after it chain onto; version 0 and the genesis hash for no pack,
    and version -1 (matching no stream) for a format that does not count its events."""
    if body is None:
        return 0, GENESIS_HASH
    obj = read_body(body)
    if obj.get("format") not in READABLE or obj["format"] < 2:
        return -1, GENESIS_HASH
    *_, (_, digest, version, _, packed) = obj["segments"]
    return version + len(packed[0]) - 1, digest


def targets_of(requests: Iterable[AppendRequest]) -> dict[str, str]:
    """The run each event id of these requests is appended to (:func:`runs_to_unpack`);
    a run id the database cannot take is left out (its request is refused alone)."""
    return {
        new.event_id: request.stream_id
        for request in requests
        if may_hold_packs(request.stream_id) and storable(request.stream_id)
        for new in request.events
    }


def runs_to_unpack(
    missing: Collection[str],
    found: Iterable[RecordedEvent],
    targets: Mapping[str, str] | None = None,
) -> list[str]:
    """The runs whose packs may hold the ``missing`` ids of appends looked up for a retry:
    those a row among the ids is of (``found``: a run's ending retried, its terminal
    event a row) and those the ids' requests append to (``targets``, event id -> stream
    id: a claim retried finds only ``run.claimed``, a row of the session stream, while
    ``run.created`` is packed). None when no id is missing (see the module's doc)."""
    if not missing:
        return []
    runs = {e.stream_id for e in found if may_hold_packs(e.stream_id)}
    if targets:
        runs.update(
            stream_id
            for event_id in missing
            if (stream_id := targets.get(event_id)) is not None and may_hold_packs(stream_id)
        )
    return sorted(runs)
