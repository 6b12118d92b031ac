"""Merging unpacked events into a read's stored rows: the rules both backends share.

A read takes its event rows first and the packs that may hold events of the
same answer second (``eventstore/packed_reads.py``, the writers' rebuilds).
These functions bound how many packs a page unpacks and merge the two by
position, version or stream order, each event once: a compaction committing
between the two reads shows its events in both. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sessionstream.eventstore.model import RecordedEvent
from sessionstream.eventstore.packing import NO_BOUND, may_hold_packs, unpack_all


def page_bound(
    stored: Sequence[RecordedEvent],
    after: int,
    limit: int,
    keys: frozenset[str] | None,
    to_position: int | None,
) -> int:
    """The highest position a ``read_all`` page may hold, given its stored rows.

    The page is the first ``limit`` events after ``after`` of stored rows and
    packs together. Stored rows beyond a full page's last one are not known,
    so the page ends there. Without ``keys`` the log is gapless where packs
    are (they come from appends), so the first ``limit`` events lie within
    ``limit`` positions unless stored rows say otherwise: that bounds how many
    packs one page unpacks.
    """
    bound = NO_BOUND if to_position is None else to_position
    if len(stored) >= limit:
        bound = min(bound, stored[-1].position)
    if keys is None and stored:
        bound = min(bound, max(after + limit, stored[0].position))
    return bound


def rows_window(after: int, limit: int, to_position: int | None) -> int:
    """How far a page in position order without keys reads the event rows: ``limit``
    positions on (or to ``to_position``), where :func:`page_bound` ends a page that
    has rows there. Reading ``limit`` rows instead fetched rows far past that bound
    (a packed log keeps one row in twenty) and parsed each of them twenty times over
    the pages of a scan (``verify``, ``rebuild``: 0.19 million rows parsed for 5,160
    at 10^5 events). A window holding no row reads the first row after it, which
    bounds the page; a page with no packed event in it takes rows alone, as many as
    ``limit``, read on after the window."""
    return min(NO_BOUND if to_position is None else to_position, after + limit)


def merge_page(
    stored: Sequence[RecordedEvent],
    packed: Iterable[RecordedEvent],
    *,
    after: int,
    bound: int,
    limit: int,
    keys: frozenset[str] | None,
) -> list[RecordedEvent]:
    """Stored rows and unpacked events of one page, in position order, each once.

    A compaction that commits between the two reads shows its deltas in both;
    positions are unique, so the copy is dropped.
    """
    by_position = {e.position: e for e in stored if e.position <= bound}
    for e in packed:
        if after < e.position <= bound and (
            keys is None or e.stream_id in keys or e.correlation_id in keys
        ):
            by_position.setdefault(e.position, e)
    return [by_position[p] for p in sorted(by_position)][:limit]


def merge_stream(
    stored: Sequence[RecordedEvent],
    packed: Iterable[RecordedEvent],
    *,
    after_version: int,
    limit: int | None,
    to_position: int | None,
) -> list[RecordedEvent]:
    """A ``read_stream`` answer from one stream's stored rows and its unpacked events."""
    bound = NO_BOUND
    if limit is not None and len(stored) >= limit:
        bound = stored[-1].version
    by_version = {e.version: e for e in stored}
    for e in packed:
        if after_version < e.version <= bound and (
            to_position is None or e.position <= to_position
        ):
            by_version.setdefault(e.version, e)
    merged = [by_version[v] for v in sorted(by_version)]
    return merged if limit is None else merged[:limit]


def stream_bound(
    stored: Sequence[RecordedEvent], mark: tuple[str, int], full: bool
) -> tuple[str, int]:
    """The last ``(stream_id, version)`` a stream-ordered page holds, packed deltas included.

    A full page ends at its last row: what follows is the next page's. One that
    is not full is the end of what was asked for, so it takes the rest of its
    last stream too: deltas after that stream's last row up to ``to_position``
    (their terminal event lies beyond it).
    """
    if not stored:
        return (mark[0], NO_BOUND)
    last = stored[-1]
    return (last.stream_id, last.version if full else NO_BOUND)


def merge_by_stream(
    stored: Sequence[RecordedEvent],
    packed: Iterable[RecordedEvent],
    mark: tuple[str, int],
    bound: tuple[str, int],
    to_position: int | None = None,
) -> list[RecordedEvent]:
    """A page of the log in ``(stream_id, version)`` order (``read_by_stream``, a
    rebuild's) with the packed deltas inside it: after ``mark``, up to ``bound``
    (:func:`stream_bound`), at or before ``to_position``. ``packed`` must hold the
    packs of every stream from ``mark``'s to ``bound``'s."""
    keyed = {(e.stream_id, e.version): e for e in stored}
    for e in packed:
        key = (e.stream_id, e.version)
        if mark < key <= bound and (to_position is None or e.position <= to_position):
            keyed.setdefault(key, e)
    return [keyed[k] for k in sorted(keyed)]


def span_runs(limit: int) -> int:
    """How many streams that may hold packs a page in stream order of ``limit`` spans
    (:func:`stream_span`)."""
    return max(8, limit // 16)


def first_rows(limit: int) -> int:
    """How many rows a page in stream order reads first: twice as many as it spans runs.

    A finished run keeps one row, so a page of 1,000 rows kept about 60 and the
    next page read the rest again: each run's row was parsed sixteen times over
    a scan (``verify``, ``rebuild``: 0.11 million rows for 5,160 at 10^5 events).
    """
    return min(limit, 2 * span_runs(limit))


def read_enough(stored: Sequence[RecordedEvent], mark: tuple[str, int], limit: int) -> bool:
    """Whether the :func:`first_rows` rows read of a page are all the rows it keeps: all
    there were (or all a byte budget let in), or more runs than it spans. A budget cuts
    a read at the same row whatever its limit, so they are a full read's first ones;
    otherwise (runs of many rows, streams without packs) the page is read whole."""
    first = first_rows(limit)
    return (
        len(stored) < first
        or first == limit
        or len(stream_span(stored, mark, False, limit)[0]) < len(stored)
    )


def stream_span(
    stored: Sequence[RecordedEvent], mark: tuple[str, int], full: bool, limit: int
) -> tuple[Sequence[RecordedEvent], tuple[str, int]]:
    """The rows a stream-ordered page keeps, and its bound (:func:`stream_bound`): the
    rows of its first ``limit // 16`` runs (at least 8) and of the other streams among
    them, the runs whose packs the page fetches. A packed run keeps one row, so rows
    alone would let a page of 1,000 fetch 1,000 runs' packs and unpack a few dozen
    (:func:`merge_streams`); a page ended early counts as full, and the next one
    starts after it."""
    cap, runs, last = span_runs(limit), 0, ""
    for i, e in enumerate(stored):
        if e.stream_id != last:
            last = e.stream_id
            if may_hold_packs(last):
                runs += 1
                if runs > cap:
                    stored, full = stored[:i], True
                    break
    return stored, stream_bound(stored, mark, full)


def merge_streams(
    stored: Sequence[RecordedEvent],
    pack_rows: Iterable[Any],
    mark: tuple[str, int],
    bound: tuple[str, int],
    limit: int,
    to_position: int | None = None,
) -> list[RecordedEvent]:
    """:func:`merge_by_stream` one stream at a time, from ``(stream_id, correlation_id,
    body)`` pack rows, ending the page with the stream that brings it to ``limit``.

    A page in stream order is bounded in stored rows, but a finished run keeps one
    row, its terminal event, for all the events packed beside it: a page of 1,000
    rows spans up to 1,000 runs, and unpacking them all held about 100,000 events
    (``verify`` and ``rebuild`` peaked near 190 MB, at 10^5 events as at 10^6). Cut
    at a stream's end, a page holds at most ``limit`` events and one run more, and
    the packs of the streams after the cut are never unpacked; the next page
    starts after the cut's last event, as after any page.
    """
    packs_of: dict[str, list[Any]] = {}
    for row in pack_rows:
        packs_of.setdefault(row[0], []).append(row)
    rows_of: dict[str, list[RecordedEvent]] = {}
    for e in stored:
        rows_of.setdefault(e.stream_id, []).append(e)
    page: list[RecordedEvent] = []
    top = NO_BOUND if to_position is None else to_position
    for stream_id in sorted(packs_of.keys() | rows_of.keys()):
        last = bound if stream_id == bound[0] else (stream_id, NO_BOUND)
        window = (0, top, mark[1] if stream_id == mark[0] else 0)
        packed = unpack_all(packs_of.get(stream_id, ()), window)
        page += merge_by_stream(rows_of.get(stream_id, ()), packed, mark, last, to_position)
        if len(page) >= limit:
            break
    return page
