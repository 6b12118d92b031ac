"""Reads that see packed token streams (``eventstore/packing.py``) as the events they were.

Each backend reads its event rows as before, then asks its :class:`PackSource`
for the packs that may hold events of the same answer, *after* the rows: a
compaction that commits between the two reads shows its deltas in both and
they are merged once; one that commits before shows them in the packs only.
Written once here, so both backends merge by the same rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from sessionstream.eventstore.model import RecordedEvent, StoredEvent, canonical_json
from sessionstream.eventstore.packing import NO_BOUND, may_hold_packs, times_of, unpack_all
from sessionstream.eventstore.packmerge import (
    first_rows,
    merge_page,
    merge_stream,
    merge_streams,
    page_bound,
    read_enough,
    rows_window,
    stream_span,
)

#: ``(stream_id, correlation_id, body)``
PackRow = Any
#: a pack ``as_of=<time>`` cuts: ``(stream_id, correlation_id, body, first_position,
#: last_position, events, first_at, last_at)``
CutPack = Any


class PackSource(Protocol):
    async def packs_of(self, stream_id: str, bound: int = NO_BOUND) -> Sequence[PackRow]:
        """The packs of one stream that hold events at or before ``bound``, in block order."""

    async def packs_between(
        self, after: int, bound: int, keys: frozenset[str] | None
    ) -> Sequence[PackRow]: ...

    async def packs_of_streams(self, low: str, high: str) -> Sequence[PackRow]:
        """The packs of every stream id from ``low`` to ``high``, both included."""

    async def packs_at(
        self, after: int, bound: int, timestamp: str
    ) -> tuple[int | None, Sequence[CutPack]]:
        """For the packs holding events in ``(after, bound]``: the last position of those
        wholly at or before ``timestamp``, and the others it (or ``bound``) cuts."""

    async def stored_at(self, timestamp: str) -> tuple[int, int | None]:
        """The last event row at or before ``timestamp`` (``eventstore/clock.py``; 0 if
        none) and the first position above it that is an event row."""


async def read_all(
    source: PackSource,
    stored: Sequence[RecordedEvent],
    after: int,
    limit: int,
    keys: frozenset[str] | None,
    to_position: int | None,
) -> list[RecordedEvent]:
    """A ``read_all`` page from its stored rows and the packs within its bound."""
    if keys is not None and not keys:
        return list(stored)
    bound = page_bound(stored, after, limit, keys, to_position)
    if bound <= after:
        return list(stored)
    packed = unpack_all(await source.packs_between(after, bound, keys), (after, bound, 0))
    if not packed:
        return list(stored)
    return merge_page(stored, packed, after=after, bound=bound, limit=limit, keys=keys)


async def read_log(
    reader: RowReads, source: PackSource, after: int, limit: int, to_position: int | None
) -> list[RecordedEvent]:
    """A ``read_all`` page without keys: its rows within ``packmerge.rows_window``, the
    packs up to its bound, and the rows after the window when no pack is in it."""
    window = rows_window(after, limit, to_position)
    stored = await reader.read_all(after, limit=limit, to_position=window)
    if not stored and window != to_position:
        stored = await reader.read_all(after, limit=1, to_position=to_position)
    bound = page_bound(stored, after, limit, None, to_position)
    rows = await source.packs_between(after, bound, None) if bound > after else []
    packed = unpack_all(rows, (after, bound, 0))
    if packed:
        return merge_page(stored, packed, after=after, bound=bound, limit=limit, keys=None)
    if stored and len(stored) < limit and stored[-1].position != to_position:
        more = limit - len(stored)
        stored += await reader.read_all(stored[-1].position, limit=more, to_position=to_position)
    return stored


async def read_stream(
    source: PackSource,
    stored: Sequence[RecordedEvent],
    stream_id: str,
    after_version: int,
    limit: int | None,
    to_position: int | None,
) -> list[RecordedEvent]:
    if not may_hold_packs(stream_id):
        return list(stored)
    bound = NO_BOUND if to_position is None else to_position
    packed = unpack_all(await source.packs_of(stream_id, bound), (0, bound, after_version))
    if not packed:
        return list(stored)
    return merge_stream(
        stored, packed, after_version=after_version, limit=limit, to_position=to_position
    )


async def position_of(
    found: int | None,
    stream_id: str,
    version: int,
    read_stream: Callable[..., Awaitable[list[RecordedEvent]]],
) -> int | None:
    """A stored event's position, or a packed delta's (a run's seq resumes either way)."""
    if found is not None or not may_hold_packs(stream_id) or version < 1:
        return found
    events = await read_stream(stream_id, version - 1, limit=1)
    return events[0].position if events and events[0].version == version else None


async def position_at(source: PackSource, timestamp: str) -> int:
    """The last position at or before ``timestamp``, packed deltas included.

    The event rows answer first (``eventstore/clock.py``). Times never fall
    back along positions, so a packed delta recorded at or before
    ``timestamp`` after that answer lies before the next event row: only the
    packs between the two are asked about, and of those only the ones the
    time cuts are opened (:func:`latest_at`). Two statements, whatever the
    size of the log.
    """
    stored, following = await source.stored_at(timestamp)
    bound = (NO_BOUND if following is None else following) - 1
    if bound <= stored:
        return stored
    whole, cut = await source.packs_at(stored, min(bound, NO_BOUND - 1), timestamp)
    return latest_at(cut, timestamp, max(stored, whole or 0), bound + 1)


def latest_at(cut: Sequence[CutPack], timestamp: str, low: int, high: int) -> int:
    """The last position recorded at or before ``timestamp``, given ``low``, a position
    recorded at or before it, and ``high``, the first position after it known so far
    (the next event row, or beyond the log), and ``cut``, the packs the time or
    ``high`` cuts between the two.

    Times never fall back along positions, so the answer is the last position
    before the first one recorded after ``timestamp``. A cut pack's first event
    is at or before the time and, unless only ``high`` cut it, its last one
    after: that narrows the answer before any pack is opened. Each opened pack
    narrows it further, and the search stops when ``high`` is ``low + 1``. A
    session's pack spans many turns, so dozens of them are cut at any moment
    while few hold an event near the answer (``as_of=<time>`` opened 40 packs a
    request at 10^5 events, 4.7 ms): the densest are opened first, a run's
    deltas before a session's turns. Opening every pack gives the same answer.
    """
    for _, _, _, first, last, _, first_at, last_at in cut:
        if first_at is not None and first_at <= timestamp:
            low = max(low, first)
        if last_at is not None and last_at > timestamp:
            high = min(high, last)
    by_density = sorted(cut, key=lambda p: (p[5] or 0) / (p[4] - p[3] + 1), reverse=True)
    for pack in by_density:
        if high <= low + 1:
            break
        if pack[4] <= low or pack[3] >= high:
            continue  # none of its events lies between the two
        for position, at in times_of([pack[:3]], low, high - 1):
            if at <= timestamp:
                low = max(low, position)
            else:
                high = min(high, position)
                break  # its later events are later still
    return low


async def read_page(
    source: PackSource,
    stored: Sequence[StoredEvent],
    after: int,
    max_rows: int,
    keys: frozenset[str] | None,
    to_position: int | None,
) -> list[StoredEvent]:
    """A ``read_page`` from its stored rows and the packs up to its last row.

    A page may end early for its byte budget, so it cannot say whether rows
    follow; but a packed delta always has a stored event after it (its run's
    terminal one, which matches the same keys), so packs past the page's last
    row belong to a later page. Packed deltas are small: they are counted in
    ``max_rows``, not in the byte budget.
    """
    if keys is not None and not keys:
        return list(stored)
    if stored:
        bound = stored[-1].position
        if keys is None:
            if stored[0].position == after + 1 and bound - after == len(stored):
                # every position up to the last row is a stored row: nothing between
                # them is packed. The common page of a live tail (a pump reading
                # the commits of other nodes), spared a second statement
                return list(stored)
            bound = min(bound, max(after + max_rows, stored[0].position))
    else:
        bound = NO_BOUND if to_position is None else to_position
    if bound <= after:
        return list(stored)
    packed = unpack_all(await source.packs_between(after, bound, keys), (after, bound, 0))
    if not packed:
        return list(stored)
    merged = merge_page(stored, packed, after=after, bound=bound, limit=max_rows, keys=keys)
    return [e if isinstance(e, StoredEvent) else as_stored(e) for e in merged]


def as_stored(event: RecordedEvent) -> StoredEvent:
    return StoredEvent.from_row(
        (
            event.position,
            event.stream_id,
            event.version,
            event.event_id,
            event.type,
            canonical_json(event.data),
            canonical_json(event.metadata),
            event.correlation_id,
            event.recorded_at,
            event.hash,
        )
    )


async def read_by_stream(
    source: PackSource,
    stored: Sequence[RecordedEvent],
    after: tuple[str, int],
    limit: int,
    to_position: int | None,
    *,
    budgeted: bool = False,
) -> list[RecordedEvent]:
    """A ``read_by_stream`` page from its rows and the packs of the streams it spans.

    A page with a byte budget may have been cut by it, so it counts as full (it
    ends at its last row) unless empty: the caller reads on to an empty page,
    which takes the packed deltas after the last stream's last row."""
    full = len(stored) >= limit or (budgeted and bool(stored))
    stored, bound = stream_span(stored, after, full, limit)
    rows = await source.packs_of_streams(after[0], bound[0])
    if not rows:
        return list(stored)
    return merge_streams(stored, rows, after, bound, limit, to_position)


async def rows_by_stream(
    reader: RowReads,
    after: tuple[str, int],
    limit: int,
    to_position: int | None,
    max_bytes: int | None,
) -> list[RecordedEvent]:
    """The rows of a ``read_by_stream`` page, as many as :func:`read_by_stream` keeps
    (``packmerge.first_rows``)."""
    stored = await reader.read_by_stream(
        after, limit=first_rows(limit), to_position=to_position, max_bytes=max_bytes
    )
    if read_enough(stored, after, limit):
        return stored
    return await reader.read_by_stream(
        after, limit=limit, to_position=to_position, max_bytes=max_bytes
    )


class RowReads(Protocol):
    """What a backend's reader answers from its event rows alone (``sqlite/reader.py``,
    ``postgres/reader.py``): the half of a read that knows nothing of packs."""

    async def read_stream(
        self,
        stream_id: str,
        after_version: int = 0,
        *,
        limit: int | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]: ...

    async def read_all(
        self,
        after_position: int = 0,
        *,
        limit: int = 1000,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]: ...

    async def read_page(
        self,
        after_position: int,
        *,
        max_rows: int,
        max_bytes: int,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[StoredEvent]: ...

    async def read_by_stream(
        self,
        after: tuple[str, int] = ("", 0),
        *,
        limit: int = 1000,
        to_position: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RecordedEvent]: ...

    async def position_of(self, stream_id: str, version: int) -> int | None: ...


class PackedReads:
    """The event reads of a store: its reader's rows, then the packs merged in.

    Both backends inherit these, so a read over packs is spelled once; each
    sets ``_reader`` (its rows) and ``packs`` (its :class:`PackSource`).
    """

    _reader: RowReads
    packs: PackSource

    async def read_stream(
        self,
        stream_id: str,
        after_version: int = 0,
        *,
        limit: int | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        stored = await self._reader.read_stream(
            stream_id, after_version, limit=limit, to_position=to_position
        )
        return await read_stream(self.packs, stored, stream_id, after_version, limit, to_position)

    async def read_all(
        self,
        after_position: int = 0,
        *,
        limit: int = 1000,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[RecordedEvent]:
        if keys is None:
            return await read_log(self._reader, self.packs, after_position, limit, to_position)
        stored = await self._reader.read_all(
            after_position, limit=limit, keys=keys, to_position=to_position
        )
        return await read_all(self.packs, stored, after_position, limit, keys, to_position)

    async def read_page(
        self,
        after_position: int,
        *,
        max_rows: int,
        max_bytes: int,
        keys: frozenset[str] | None = None,
        to_position: int | None = None,
    ) -> list[StoredEvent]:
        stored = await self._reader.read_page(
            after_position,
            max_rows=max_rows,
            max_bytes=max_bytes,
            keys=keys,
            to_position=to_position,
        )
        return await read_page(self.packs, stored, after_position, max_rows, keys, to_position)

    async def read_by_stream(
        self,
        after: tuple[str, int] = ("", 0),
        *,
        limit: int = 1000,
        to_position: int | None = None,
        max_bytes: int | None = None,
    ) -> list[RecordedEvent]:
        stored = await rows_by_stream(self._reader, after, limit, to_position, max_bytes)
        return await read_by_stream(
            self.packs, stored, after, limit, to_position, budgeted=max_bytes is not None
        )

    async def position_of(self, stream_id: str, version: int) -> int | None:
        found = await self._reader.position_of(stream_id, version)
        return await position_of(found, stream_id, version, self.read_stream)

    async def position_at(self, timestamp: str) -> int:
        return await position_at(self.packs, timestamp)
