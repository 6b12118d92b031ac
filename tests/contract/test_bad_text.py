"""Text no backend can store or index fails its own request, never its batch (issue 21).

Every id an append names (stream id, event id, type, correlation id) is
checked before any I/O (``eventstore/batch.py``): a NUL (PostgreSQL cannot
store it), a lone surrogate (not UTF-8), or more than ``MAX_ID_BYTES`` (an
index entry on PostgreSQL holds at most 2,704 bytes; a longer id failed the
whole group-commit batch as ``StorageUnavailable``). Each case is batched
with valid neighbours, which commit; both backends refuse exactly the same.
"""

from __future__ import annotations

import asyncio
import secrets

from sessionstream.core.errors import ValidationFailed
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.batch import MAX_ID_BYTES
from sessionstream.eventstore.model import NewEvent


def random_text(size: int) -> str:
    """ASCII that does not compress, so PostgreSQL's index sees every byte of it."""
    return secrets.token_urlsafe(size)[:size]


def refused_cases() -> dict[str, tuple[str, NewEvent]]:
    """(stream id, event) pairs that can never be appended, by what is wrong with them."""
    long = random_text(MAX_ID_BYTES + 1)
    wide = "é" * (MAX_ID_BYTES // 2 + 1)  # few characters, too many UTF-8 bytes
    return {
        "NUL in the stream id": ("s-\x00", NewEvent("x", {})),
        "NUL in the event id": ("s", NewEvent("x", {}, event_id="e-\x00")),
        "NUL in the type": ("s", NewEvent("x\x00", {})),
        "NUL in the correlation id": ("s", NewEvent("x", {}, correlation_id="c\x00")),
        "surrogate in the stream id": ("s-\ud800", NewEvent("x", {})),
        "surrogate in the event id": ("s", NewEvent("x", {}, event_id="e-\udfff")),
        "surrogate in the type": ("s", NewEvent("\ud800", {})),
        "surrogate in the correlation id": ("s", NewEvent("x", {}, correlation_id="\ud800")),
        "surrogate in the data": ("s", NewEvent("x", {"text": "\ud800"})),
        "long stream id": (long, NewEvent("x", {})),
        "long event id": ("s", NewEvent("x", {}, event_id=long)),
        "long type": ("s", NewEvent(long, {})),
        "long correlation id": ("s", NewEvent("x", {}, correlation_id=long)),
        "wide stream id": (wide, NewEvent("x", {})),
    }


async def test_each_bad_id_fails_alone_and_its_neighbours_commit(store: EventStore) -> None:
    cases = refused_cases()
    good = [f"good-{n}" for n in range(len(cases) + 1)]
    calls = []
    for n, (stream_id, event) in enumerate(cases.values()):
        calls.append(store.append(good[n], [NewEvent("x", {"n": n})]))
        calls.append(store.append(stream_id, [event]))
    calls.append(store.append(good[-1], [NewEvent("x", {})]))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    bad = dict(zip(cases, outcomes[1::2], strict=False))
    for case, outcome in bad.items():
        assert isinstance(outcome, ValidationFailed), (case, outcome)
    fine = outcomes[0::2]
    assert not any(isinstance(o, BaseException) for o in fine), fine
    stored = await store.read_all(0, limit=1000)
    assert [e.position for e in stored] == list(range(1, len(good) + 1))
    assert sorted(e.stream_id for e in stored) == sorted(good)


async def test_ids_of_the_longest_size_are_stored_by_every_backend(store: EventStore) -> None:
    longest = random_text(MAX_ID_BYTES)
    wide = "é" * (MAX_ID_BYTES // 2)  # exactly MAX_ID_BYTES in UTF-8
    appended = await store.append(
        longest,
        [NewEvent(longest, {}, event_id=random_text(MAX_ID_BYTES), correlation_id=longest)],
    )
    assert appended.version == 1
    other = await store.append(wide, [NewEvent("x", {})])
    assert other.version == 1
    assert [e.stream_id for e in await store.read_all(0)] == [longest, wide]
    assert [e.stream_id for e in await store.read_stream(longest)] == [longest]
