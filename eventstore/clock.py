"""The log's clock: ``recorded_at`` never decreases along positions, so time is an index seek.

An append stamps its batch with ``max(now, the newest recorded_at)``, read
under the same lock that hands out the batch's positions (SQLite's write
lock, PostgreSQL's ``log_head`` row). So on a log written by appends alone,
a later position never has an earlier time, whatever a node's clock does;
a clock that steps back makes a few events share the newest time instead.
``as_of=<time>`` then asks "the last position recorded at or before ``t``",
and that is the newest entry of the ``recorded_at`` index at or below ``t``:
one seek instead of reading every newer event.

Two things can still put an earlier time after a later one: a store written
before appends clamped, and an import, which keeps every ``recorded_at`` as
exported (they are hashed). Those events are the *exceptions*, kept in a
small table beside the log: an event whose time is below the maximum time of
the events before it. The answer is the larger of the seek and the last
exception at or before ``t``. Why that is exact: let ``q`` be the seek's
answer, the event with the largest ``(recorded_at, position)`` at or below
``t``, and ``p > q`` any later event with ``recorded_at(p) <= t``. If ``p`` is
not an exception its time is the running maximum at ``p``, so at least
``recorded_at(q)``; with ``p > q`` that makes ``(recorded_at(p), p)`` larger
than ``q``'s while still at or below ``t``, which contradicts how ``q`` was
picked. So every such ``p`` is an exception, and the exceptions table answers
for them. ``tests/test_clock.py`` checks both halves against a scan.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from sessionstream.eventstore.model import RecordedEvent


def stamp(now: str, newest: str | None) -> str:
    """The time a batch is recorded at: now, or the newest time already recorded."""
    return newest if newest is not None and newest > now else now


def exceptions(
    events: Iterable[RecordedEvent], newest: str | None
) -> tuple[list[tuple[int, str]], str | None]:
    """``(position, recorded_at)`` of the events whose time is below the running maximum
    (starting at ``newest``, the log's maximum before them), and the maximum after them."""
    found: list[tuple[int, str]] = []
    for event in events:
        if newest is not None and event.recorded_at < newest:
            found.append((event.position, event.recorded_at))
        else:
            newest = event.recorded_at
    return found, newest


#: the SQL that finds the exceptions already stored in a log (a migration; both backends)
EXCEPTIONS_OF_LOG = """
SELECT position, recorded_at FROM (
    SELECT position, recorded_at,
           MAX(recorded_at) OVER (
               ORDER BY position ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS before
    FROM events
) AS t WHERE recorded_at < before
"""
