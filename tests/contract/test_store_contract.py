"""The event store contract (``eventstore/base.py``), run against every backend.

Each test states one guarantee commands, projections or subscribers rely on
and checks it against what the store actually holds, never against numbers
copied from the implementation. ``store_factory`` (see ``conftest.py``) opens
the backend under test.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from typing import Any

import pytest

from sessionstream.core.errors import ConcurrencyConflict, SessionStreamError, ValidationFailed
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.hub import LIVE, Subscription
from sessionstream.eventstore.model import (
    GENESIS_HASH,
    NO_STREAM,
    AppendRequest,
    Doc,
    NewEvent,
    RecordedEvent,
    recompute_hash,
)
from sessionstream.eventstore.projector import fold
from sessionstream.projections import SessionProjection
from tests.contract.conftest import StoreFactory

WAIT = 30.0  # generous: a stuck subscriber fails the test instead of hanging it


# helpers -------------------------------------------------------------------------


def ev(type_: str = "test.happened", correlation_id: str | None = None, **data: Any) -> NewEvent:
    return NewEvent(
        type_, data, metadata={"actor": {"type": "system"}}, correlation_id=correlation_id
    )


def session_created(sid: str, user: str = "u1", campaign: str = "c1") -> NewEvent:
    return ev("session.created", id=sid, user_id=user, campaign_id=campaign, node_id="n1")


async def read_everything(
    store: EventStore, after: int = 0, keys: frozenset[str] | None = None
) -> list[RecordedEvent]:
    events: list[RecordedEvent] = []
    while True:
        page = await store.read_all(after, limit=200, keys=keys)
        if not page:
            return events
        events.extend(page)
        after = page[-1].position


def assert_gapless(events: list[RecordedEvent], start: int = 1) -> None:
    positions = [e.position for e in events]
    assert positions == list(range(start, start + len(events))), positions


def assert_stream_versions(events: list[RecordedEvent]) -> None:
    """Within every stream, versions run 1, 2, 3 ... in position order."""
    seen: dict[str, int] = {}
    for event in events:
        assert event.version == seen.get(event.stream_id, 0) + 1, event
        seen[event.stream_id] = event.version


async def collect_until(
    sub: Subscription, end_type: str, *, gate: asyncio.Event | None = None
) -> list[RecordedEvent]:
    """Every event up to the first of ``end_type``; with a gate, pause after the first."""
    got: list[RecordedEvent] = []

    async def run() -> None:
        async for event in sub:
            got.append(event)
            if event.type == end_type:
                return
            if gate is not None:
                await gate.wait()

    try:
        await asyncio.wait_for(run(), WAIT)
    finally:
        sub.close()
    return got


async def wait_for_state(sub: Subscription, state: str) -> None:
    async def poll() -> None:
        while sub.state != state:  # noqa: ASYNC110 - the state has no event to wait on
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), WAIT)


# appends: optimistic concurrency and positions -----------------------------------


async def test_new_store_is_empty(store: EventStore) -> None:
    assert await store.head_position() == 0
    assert await store.read_all() == []
    assert await store.stream_version("session-x") == 0
    assert await store.read_stream("session-x") == []


async def test_racing_appenders_get_one_winner_per_version(store: EventStore) -> None:
    stream = f"race-{uuid.uuid4().hex[:8]}"
    start = asyncio.Event()

    async def claim_first(n: int) -> int | None:
        await start.wait()
        try:
            await store.append(stream, [ev(appender=n)], expected_version=NO_STREAM)
        except ConcurrencyConflict as exc:
            assert exc.expected == NO_STREAM and exc.actual >= 1
            return None
        return n

    tasks = [asyncio.create_task(claim_first(n)) for n in range(50)]
    start.set()
    first = [w for w in await asyncio.gather(*tasks) if w is not None]
    assert len(first) == 1, first  # exactly one appender created the stream

    wins: dict[int, int] = {1: first[0]}  # version -> appender
    conflicts = 0

    async def keep_racing(n: int) -> None:
        nonlocal conflicts
        for _ in range(4):
            current = await store.stream_version(stream)
            try:
                result = await store.append(stream, [ev(appender=n)], expected_version=current)
            except ConcurrencyConflict as exc:
                assert exc.expected == current and exc.actual > current
                conflicts += 1
                continue
            assert result.version == current + 1
            assert result.version not in wins, "two appenders won the same version"
            wins[result.version] = n
            await asyncio.sleep(0)

    await asyncio.gather(*(keep_racing(n) for n in range(50)))
    stored = await store.read_stream(stream)
    assert [e.version for e in stored] == list(range(1, len(stored) + 1))
    assert sorted(wins) == [e.version for e in stored]
    assert {e.version: e.data["appender"] for e in stored} == wins
    assert conflicts > 0  # the race really happened
    assert len(stored) + conflicts == 1 + 50 * 4
    assert_gapless(await read_everything(store))
    assert await store.stream_version(stream) == len(stored)


async def test_concurrent_streams_get_gapless_increasing_positions(store: EventStore) -> None:
    streams = [f"s{n}-{uuid.uuid4().hex[:6]}" for n in range(40)]
    returned: list[RecordedEvent] = []

    async def writer(stream: str) -> None:
        for version in range(10):
            count = 1 + version % 3
            result = await store.append(
                stream, [ev(i=version, k=k) for k in range(count)], expected_version=None
            )
            assert [e.position for e in result.events] == list(
                range(result.events[0].position, result.events[0].position + count)
            ), "one request's events must be contiguous"
            returned.extend(result.events)
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(s) for s in streams))
    stored = await read_everything(store)
    assert_gapless(stored)
    assert_stream_versions(stored)
    assert len(stored) == sum(1 + v % 3 for v in range(10)) * len(streams)
    assert sorted(returned, key=lambda e: e.position) == stored
    assert await store.head_position() == stored[-1].position
    for stream in streams:
        assert await store.stream_version(stream) == sum(1 + v % 3 for v in range(10))


async def test_transact_is_atomic_across_streams(store: EventStore) -> None:
    sid = uuid.uuid4().hex
    a, b = f"session-{sid}", f"other-{uuid.uuid4().hex[:8]}"
    await store.append(a, [session_created(sid)], expected_version=NO_STREAM)
    before_doc = await store.get_doc("session", sid)
    head = await store.head_position()

    bad_second = [
        AppendRequest(a, (ev("session.patched", fields={"title": "lost"}),), 1),
        AppendRequest(b, (ev(),), 7),  # b does not exist: conflict
    ]
    bad_first = [bad_second[1], bad_second[0]]
    for requests in (bad_second, bad_first):
        with pytest.raises(ConcurrencyConflict) as caught:
            await store.transact(requests)
        assert caught.value.stream_id == b and caught.value.actual == 0
        assert await store.head_position() == head
        assert await store.stream_version(a) == 1
        assert await store.stream_version(b) == 0
        assert await store.read_all(head) == []
        assert await store.get_doc("session", sid) == before_doc

    results = await store.transact(
        [
            AppendRequest(a, (ev("session.patched", fields={"title": "kept"}),), 1),
            AppendRequest(b, (ev(), ev()), NO_STREAM),
        ]
    )
    assert [r.version for r in results] == [2, 2]
    positions = [e.position for r in results for e in r.events]
    assert positions == [head + 1, head + 2, head + 3]
    doc = await store.get_doc("session", sid)
    assert doc is not None and doc.body["row"]["title"] == "kept"
    # the event ids of a failed transact were not consumed: they can be appended later
    retried = await store.append(b, bad_second[1].events, expected_version=2)
    assert not retried.duplicate and retried.version == 3


async def test_a_failing_request_does_not_fail_its_neighbours(store: EventStore) -> None:
    """Group commit batches requests together; a conflict must fail only its own."""
    streams = [f"n{n}-{uuid.uuid4().hex[:6]}" for n in range(30)]
    outcomes = await asyncio.gather(
        *(
            store.append(s, [ev(n=n)], expected_version=NO_STREAM if n % 2 else 5)
            for n, s in enumerate(streams)
        ),
        return_exceptions=True,
    )
    for n, outcome in enumerate(outcomes):
        if n % 2:
            assert not isinstance(outcome, BaseException), outcome
        else:
            assert isinstance(outcome, ConcurrencyConflict), outcome
    stored = await read_everything(store)
    assert_gapless(stored)
    assert {e.stream_id for e in stored} == set(streams[1::2])


async def test_a_malformed_request_fails_alone(store: EventStore) -> None:
    """A repeated event id, or text with no JSON or UTF-8 form, is refused alone."""
    repeated = ev(i=0)
    good = [f"fine-{n}" for n in range(6)]
    outcomes = await asyncio.gather(
        store.append("repeats", [repeated, repeated]),
        *(store.append(s, [ev(n=n)]) for n, s in enumerate(good[:3])),
        store.append("unencodable", [ev(value=object())]),
        store.append("surrogate", [ev(text="\ud800")]),
        store.append("surrogate", [ev(correlation_id="session-\ud800")]),
        *(store.append(s, [ev(n=n)]) for n, s in enumerate(good[3:])),
        return_exceptions=True,
    )
    bad = (0, 4, 5, 6)
    for i in bad:
        assert isinstance(outcomes[i], ValidationFailed), (i, outcomes[i])
    assert not any(isinstance(o, BaseException) for i, o in enumerate(outcomes) if i not in bad)
    stored = await read_everything(store)
    assert_gapless(stored)
    assert sorted(e.stream_id for e in stored) == sorted(good)
    assert await store.stream_version("repeats") == 0
    # the id was not consumed by the refused request
    assert (await store.append("repeats", [repeated])).version == 1


async def test_retrying_with_the_same_event_ids_is_a_no_op(store: EventStore) -> None:
    stream = f"idem-{uuid.uuid4().hex[:8]}"
    events = [ev(i=0), ev(i=1)]
    first = await store.append(stream, events, expected_version=NO_STREAM)
    assert not first.duplicate
    await store.append(stream, [ev(i=2)])
    head = await store.head_position()
    stored = await store.read_stream(stream)

    # a retry returns the stored records, whatever version it expects
    for expected in (NO_STREAM, None, 3):
        retry = await store.append(stream, events, expected_version=expected)
        assert retry.duplicate
        assert list(retry.events) == stored[:2]
        assert retry.version == 3
    assert await store.head_position() == head

    # retries racing each other (and the original) still write once
    fresh = [ev(i=3)]
    results = await asyncio.gather(*(store.append(stream, fresh) for _ in range(10)))
    assert sum(not r.duplicate for r in results) == 1
    assert len({r.events[0].position for r in results}) == 1
    assert await store.head_position() == head + 1

    # half-overlapping retries and ids reused on another stream are rejected
    with pytest.raises(ValidationFailed):
        await store.append(stream, [events[1], ev(i=9)])
    with pytest.raises(ValidationFailed):
        await store.append(f"elsewhere-{uuid.uuid4().hex[:6]}", [events[0]])
    assert await store.head_position() == head + 1
    assert await store.read_stream(stream) == [*stored, *(await store.read_stream(stream, 3))]


async def test_a_retry_batched_with_fresh_appends_changes_only_what_is_new(
    store: EventStore,
) -> None:
    """A stored id in a batch makes the database refuse the batch's insert; the
    batch is redone request by request and each request still gets its answer."""
    stream = f"mixed-{uuid.uuid4().hex[:8]}"
    stored = [ev(i=0)]
    first = await store.append(stream, stored, expected_version=NO_STREAM)
    head = await store.head_position()
    others = [f"fresh-{uuid.uuid4().hex[:8]}-{n}" for n in range(20)]
    results = await asyncio.gather(
        store.append(stream, stored),  # any version: only the database knows it is a retry
        *(
            store.append(name, [ev(n=n)], expected_version=NO_STREAM)
            for n, name in enumerate(others)
        ),
        store.append(stream, [ev(i=1)], expected_version=1),
    )
    retry, fresh, follow = results[0], results[1:-1], results[-1]
    assert retry.duplicate and list(retry.events) == list(first.events)
    assert not any(r.duplicate for r in fresh) and not follow.duplicate
    assert follow.version == 2
    assert await store.head_position() == head + len(others) + 1
    for name in others:
        assert await store.stream_version(name) == 1
    assert_gapless(await store.read_all(0))


async def test_retries_of_one_append_batched_together_are_all_no_ops(store: EventStore) -> None:
    """A stale retry of part of an append and a retry of all of it, in one batch.

    The SQLite planned batch looked up only the stale retry's ids and then
    refused the whole retry as "some ids stored, others not"; every retry of
    stored events is a no-op (``base.py``)."""
    stream = f"retries-{uuid.uuid4().hex[:8]}"
    events = [ev(i=0), ev(i=1)]
    first = await store.append(stream, events, expected_version=NO_STREAM)
    head = await store.head_position()
    part, whole, fresh = await asyncio.gather(
        store.append(stream, events[:1], expected_version=NO_STREAM),
        store.append(stream, events, expected_version=1),
        store.append(stream, [ev(i=2)], expected_version=2),
    )
    assert part.duplicate and list(part.events) == list(first.events[:1])
    assert whole.duplicate and list(whole.events) == list(first.events)
    assert not fresh.duplicate and fresh.version == 3
    assert await store.head_position() == head + 1


async def test_a_request_repeating_an_event_id_is_malformed_whatever_it_expects(
    store: EventStore,
) -> None:
    """Refused as malformed (never a conflict worth retrying), and alone.

    SQLite checked the expected version first and answered a conflict;
    PostgreSQL refused the request. Both refuse it now."""
    stream = f"twice-{uuid.uuid4().hex[:8]}"
    await store.append(stream, [ev()], expected_version=NO_STREAM)
    repeated = ev(i=1)
    for expected in (NO_STREAM, 1, None, 5):
        outcomes = await asyncio.gather(
            store.append(stream, [repeated, repeated], expected_version=expected),
            store.append(f"{stream}-other", [ev()]),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], ValidationFailed), (expected, outcomes[0])
        assert not isinstance(outcomes[1], BaseException), outcomes[1]
    assert await store.stream_version(stream) == 1
    assert (await store.append(stream, [repeated], expected_version=1)).version == 2


async def test_text_no_backend_can_store_fails_only_its_request(store: EventStore) -> None:
    """A NUL in a type, stream id or correlation id; a lone surrogate anywhere.

    PostgreSQL cannot store a NUL and refused it; SQLite stored it, so a log
    could not move between them. Every backend refuses it now."""
    outcomes = await asyncio.gather(
        store.append("s-1", [NewEvent("bad\x00type", {})]),
        store.append("s-\x00", [NewEvent("x", {})]),
        store.append("s-2", [NewEvent("x", {}, correlation_id="session-\x00")]),
        store.append("s-3", [NewEvent("x", {"text": "\ud800"})]),
        store.append("s-4", [NewEvent("x", {"text": "ok ünïcode \x00 escaped in JSON"})]),
        return_exceptions=True,
    )
    for outcome in outcomes[:4]:
        assert isinstance(outcome, ValidationFailed), outcome
    assert not isinstance(outcomes[4], BaseException), outcomes[4]
    (event,) = await store.read_all()
    assert event.data == {"text": "ok ünïcode \x00 escaped in JSON"} and event.position == 1


async def test_a_request_without_events_is_rejected(store: EventStore) -> None:
    with pytest.raises(SessionStreamError):
        await store.append("empty-stream", [])
    assert await store.head_position() == 0


# reads ------------------------------------------------------------------------------


async def test_read_after_write(store_factory: StoreFactory) -> None:
    writer = await store_factory()
    readers = [writer, await store_factory()] if store_factory.multi_node else [writer]

    async def session_life(n: int) -> None:
        sid = uuid.uuid4().hex
        created = await writer.append(f"session-{sid}", [session_created(sid)], NO_STREAM)
        for reader in readers:
            doc = await reader.get_doc("session", sid)
            assert doc is not None and doc.version == created.version
        for i in range(8):
            result = await writer.append(
                f"session-{sid}", [ev("session.patched", fields={"title": f"{n}/{i}"})], i + 1
            )
            position = result.events[-1].position
            for reader in readers:
                doc = await reader.get_doc("session", sid)
                assert doc is not None
                assert doc.body["row"]["title"] == f"{n}/{i}"
                assert (doc.version, doc.position) == (result.version, position)
                # every query path, not only the document one, sees the write
                assert await reader.stream_version(f"session-{sid}") == result.version
                assert await reader.head_position() >= position
                assert len(await reader.read_stream(f"session-{sid}")) == result.version
                assert (await reader.read_all(position - 1, limit=1))[0] == result.events[-1]
                assert await reader.position_of(f"session-{sid}", result.version) == position
        listed = await readers[-1].list_docs("session", owner="u1")
        assert sid in {d.key for d in listed}

    await asyncio.gather(*(session_life(n) for n in range(20)))


async def test_read_stream_and_read_all(store: EventStore) -> None:
    sid = uuid.uuid4().hex
    session, run, other = f"session-{sid}", f"run-{uuid.uuid4().hex}", "other-x"
    appended: list[RecordedEvent] = []
    for i in range(5):
        appended += (await store.append(session, [ev(i=i)])).events
        run_events = [ev(correlation_id=session, i=i), ev(correlation_id=session, i=i)]
        appended += (await store.append(run, run_events)).events
        appended += (await store.append(other, [ev(i=i)])).events
    everything = await store.read_all()
    assert everything == sorted(appended, key=lambda e: e.position)
    assert_gapless(everything)

    by_session = await store.read_stream(session)
    assert [e.version for e in by_session] == [1, 2, 3, 4, 5]
    assert by_session == [e for e in everything if e.stream_id == session]
    assert await store.read_stream(session, 2) == by_session[2:]
    assert await store.read_stream(session, limit=2) == by_session[:2]
    assert await store.read_stream(session, 1, limit=2) == by_session[1:3]
    assert await store.read_stream(session, to_position=by_session[2].position) == by_session[:3]
    assert await store.read_stream(session, 5) == []
    assert await store.read_stream("session-unknown") == []

    middle = everything[7].position
    assert await store.read_all(middle) == everything[8:]
    assert await store.read_all(limit=4) == everything[:4]
    assert await store.read_all(3, limit=4) == everything[3:7]
    assert await store.read_all(to_position=middle) == everything[:8]
    assert await store.read_all(2, to_position=middle, limit=3) == everything[2:5]
    assert await store.read_all(everything[-1].position) == []

    def matching(*keys: str) -> list[RecordedEvent]:
        return [e for e in everything if set(e.keys) & set(keys)]

    assert len(matching(session)) == 15  # the session's own events and its run's
    for keys in ((session,), (run,), (other,), (run, other), (session, other), ("nobody",)):
        assert await store.read_all(keys=frozenset(keys)) == matching(*keys), keys
    assert (
        await store.read_all(middle, keys=frozenset({session}), limit=3)
        == [e for e in matching(session) if e.position > middle][:3]
    )
    assert await store.read_all(keys=frozenset({session}), to_position=middle) == [
        e for e in matching(session) if e.position <= middle
    ]
    assert await store.read_all(keys=frozenset()) == []


async def test_positions_versions_and_head(store: EventStore) -> None:
    appended: list[RecordedEvent] = []
    streams = ["alpha", "beta"]
    for i in range(6):
        batch = [ev(i=i)] if i % 3 else [ev(i=i), ev(i=i)]
        result = await store.append(streams[i % 2], batch)
        appended.extend(result.events)
        await asyncio.sleep(0.003)  # distinct recorded_at milliseconds
    assert await store.head_position() == appended[-1].position
    for event in appended:
        assert await store.position_of(event.stream_id, event.version) == event.position
    assert await store.position_of("alpha", 99) is None
    assert await store.position_of("nowhere", 1) is None
    for stream in streams:
        assert await store.stream_version(stream) == max(
            e.version for e in appended if e.stream_id == stream
        )
    assert await store.position_at("1970-01-01T00:00:00.000Z") == 0
    assert await store.position_at("9999-12-31T23:59:59.999Z") == appended[-1].position
    for event in appended:
        expected = max(e.position for e in appended if e.recorded_at <= event.recorded_at)
        assert await store.position_at(event.recorded_at) == expected


async def test_hash_chain(store: EventStore) -> None:
    payloads: list[dict[str, Any]] = [
        {"text": "héllo ✓ — ünïcode", "n": 1},
        {"nested": {"list": [1, 2.5, None, True], "empty": {}}, "big": 2**53},
        {"quote": 'a "b" \\ c', "newline": "x\ny"},
        {},
    ]
    rng = random.Random(7)
    streams = [f"chain-{n}" for n in range(4)]
    returned: list[RecordedEvent] = []
    for _ in range(6):
        requests = [
            AppendRequest(
                s,
                tuple(
                    NewEvent("test.chained", rng.choice(payloads), {"actor": {"id": s}})
                    for _ in range(rng.randint(1, 3))
                ),
            )
            for s in rng.sample(streams, 2)
        ]
        for result in await store.transact(requests):
            returned.extend(result.events)
    stored = await read_everything(store)
    assert sorted(returned, key=lambda e: e.position) == stored
    previous: dict[str, str] = {}
    for event in stored:
        prev = previous.get(event.stream_id, GENESIS_HASH)
        assert event.hash == recompute_hash(prev, event), event
        previous[event.stream_id] = event.hash
    assert len(set(previous.values())) == len(streams)


# subscriptions ------------------------------------------------------------------------


async def test_subscribers_get_every_event_once_in_order_while_appends_continue(
    store: EventStore,
) -> None:
    sid = uuid.uuid4().hex
    session = f"session-{sid}"
    keys = frozenset({session, "keyed-side"})
    rng = random.Random(11)

    async def appender(n: int, count: int) -> None:
        run = f"run-{uuid.uuid4().hex}"
        for i in range(count):
            choice = rng.random()
            if choice < 0.3:
                events = [ev(correlation_id=session, n=n, i=i) for _ in range(rng.randint(1, 3))]
                await store.append(run, events)
            elif choice < 0.4:
                await store.append("keyed-side", [ev(n=n, i=i)])
            else:
                await store.append(f"plain-{n}", [ev(n=n, i=i)])
            if rng.random() < 0.5:
                await asyncio.sleep(0)

    await asyncio.gather(*(appender(n, 15) for n in range(4)))
    mid = (await store.head_position()) // 2
    subscribers = {
        "all": store.subscribe(0),
        "mid": store.subscribe(mid),
        "keyed": store.subscribe(0, keys=keys),
        "keyed_mid": store.subscribe(mid, keys=keys),
    }
    consumers = {
        name: asyncio.create_task(collect_until(sub, "test.end"))
        for name, sub in subscribers.items()
    }
    writers = [asyncio.create_task(appender(n, 40)) for n in range(4, 10)]
    await asyncio.sleep(0.01)
    late_cursor = await store.head_position()
    subscribers["late"] = store.subscribe(late_cursor)
    consumers["late"] = asyncio.create_task(collect_until(subscribers["late"], "test.end"))
    await asyncio.gather(*writers)
    end = await store.append(session, [ev("test.end")])

    got = {name: await task for name, task in consumers.items()}
    end_position = end.events[0].position
    cursors = {"all": 0, "mid": mid, "keyed": 0, "keyed_mid": mid, "late": late_cursor}
    for name, events in got.items():
        sub_keys = keys if name.startswith("keyed") else None
        expected = [
            e
            for e in await read_everything(store, cursors[name], sub_keys)
            if e.position <= end_position
        ]
        assert events == expected, name
        assert len({e.position for e in events}) == len(events)
    assert_gapless(got["all"])
    assert any(e.correlation_id == session for e in got["keyed"])
    assert any(e.stream_id == "keyed-side" for e in got["keyed"])


async def test_an_overflowing_subscriber_falls_back_to_catch_up(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory(max_queue=4)
    gate = asyncio.Event()  # holds both subscribers after their first event
    slow = store.subscribe(0)
    keyed = store.subscribe(0, keys=frozenset({"hot"}))
    slow_task = asyncio.create_task(collect_until(slow, "test.end", gate=gate))
    keyed_task = asyncio.create_task(collect_until(keyed, "test.end", gate=gate))
    await wait_for_state(slow, LIVE)
    await wait_for_state(keyed, LIVE)
    for i in range(30):
        await store.append("hot" if i % 2 == 0 else "cold", [ev(i=i), ev(i=i)])

    async def published() -> None:
        head = await store.head_position()
        while store.hub.published_position < head:  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.005)

    await asyncio.wait_for(published(), WAIT)
    gate.set()
    for i in range(30, 40):  # and more while they catch up
        await store.append("hot" if i % 2 == 0 else "cold", [ev(i=i), ev(i=i)])
    await store.append("hot", [ev("test.end")])
    slow_events, keyed_events = await slow_task, await keyed_task
    everything = await read_everything(store)
    assert slow_events == everything
    assert keyed_events == [e for e in everything if e.stream_id == "hot"]
    assert slow.lag_fallbacks >= 1, "the buffer never overflowed: the test proves nothing"
    assert keyed.lag_fallbacks >= 1
    assert store.hub.lag_fallbacks >= 2


async def test_eight_writers_and_a_tailing_reader_see_no_gaps(
    store_factory: StoreFactory,
) -> None:
    """On PostgreSQL each writer is its own store (own connections), as nodes are."""
    if store_factory.multi_node:
        writers = [await store_factory(pool_size=2) for _ in range(8)]
    else:
        writers = [await store_factory()] * 8
    tail_store = writers[-1]
    per_writer = [1, 3] * 12
    total = len(writers) * sum(per_writer)
    subscription = writers[0].subscribe(0)
    seen_by_tail: list[int] = []

    async def write(n: int, store: EventStore) -> None:
        stream = f"eight-{n}"
        for version, count in enumerate(per_writer):
            expected = sum(per_writer[:version])
            batch = [ev(n=n, i=version) for _ in range(count)]
            await store.append(stream, batch, expected_version=expected)

    async def tail() -> None:
        cursor = 0
        while cursor < total:
            page = await tail_store.read_all(cursor, limit=37)
            for event in page:
                assert event.position == cursor + 1, f"gap after {cursor}: saw {event.position}"
                cursor = event.position
                seen_by_tail.append(cursor)
            if not page:
                await asyncio.sleep(0.001)

    async def subscribe() -> list[int]:
        positions: list[int] = []
        async for event in subscription:
            positions.append(event.position)
            if len(positions) == total:
                break
        subscription.close()
        return positions

    sub_task = asyncio.create_task(subscribe())
    await asyncio.wait_for(
        asyncio.gather(tail(), *(write(n, s) for n, s in enumerate(writers))), WAIT
    )
    subscribed = await asyncio.wait_for(sub_task, WAIT)
    assert seen_by_tail == list(range(1, total + 1))
    assert subscribed == list(range(1, total + 1))
    stored = await read_everything(tail_store)
    assert_gapless(stored)
    assert_stream_versions(stored)
    assert Counter(e.stream_id for e in stored) == {
        f"eight-{n}": sum(per_writer) for n in range(len(writers))
    }


# read models ------------------------------------------------------------------------


async def test_list_docs_order_and_filters(store: EventStore) -> None:
    owners, parents = ["u1", "u2"], ["c1", "c2"]
    keys = [uuid.uuid4().hex for _ in range(9)]
    owner_of = {k: owners[i % 2] for i, k in enumerate(keys)}
    parent_of = {k: parents[(i // 2) % 2] for i, k in enumerate(keys)}
    # five sessions in one transaction (likely one timestamp: the key breaks the tie)
    await store.transact(
        [
            AppendRequest(f"session-{k}", (session_created(k, owner_of[k], parent_of[k]),), 0)
            for k in keys[:5]
        ]
    )
    for k in keys[5:]:
        await asyncio.sleep(0.003)
        await store.append(f"session-{k}", [session_created(k, owner_of[k], parent_of[k])], 0)
    active = {keys[1], keys[6]}
    for k in active:
        await store.append(
            f"session-{k}", [ev("run.claimed", run_id=f"run_{k}", kind="turn", task_status="x")]
        )
    deleted = keys[3]
    await store.append(f"session-{deleted}", [ev("session.deleted")])
    await store.append(
        f"campaign-{uuid.uuid4()}",
        [ev("campaign.created", id="c9", user_id="u1", name="not a session")],
    )

    docs: dict[str, Doc] = {}
    for k in keys:
        doc = await store.get_doc("session", k)
        assert doc is not None
        docs[k] = doc
    assert all(docs[k].index.active == (k in active) for k in keys)
    assert docs[deleted].index.deleted

    def expected(**filters: Any) -> list[Doc]:
        include_deleted = filters.pop("include_deleted", False)
        chosen = [
            d
            for d in docs.values()
            if (include_deleted or not d.index.deleted)
            and all(getattr(d.index, name) == value for name, value in filters.items())
        ]
        return sorted(chosen, key=lambda d: (d.index.created_at or "", d.key))

    cases: list[dict[str, Any]] = [
        {},
        {"include_deleted": True},
        {"owner": "u1"},
        {"owner": "u2", "include_deleted": True},
        {"parent": "c2"},
        {"owner": "u1", "parent": "c1"},
        {"active": True},
        {"active": False},
        {"owner": "nobody"},
    ]
    for case in cases:
        listed = await store.list_docs("session", **case)
        assert listed == expected(**case), case
    all_listed = await store.list_docs("session", include_deleted=True)
    assert len(all_listed) == len(keys)
    # the five created together share a timestamp, so their order is the key's
    together = [d for d in all_listed if d.key in keys[:5]]
    if len({d.index.created_at for d in together}) == 1:
        assert [d.key for d in together] == sorted(keys[:5])
    assert [d.kind for d in await store.list_docs("campaign")] == ["campaign"]


async def seed_every_projection(store: EventStore) -> None:
    """A small history touching every read-model kind."""
    user = str(uuid.uuid4())
    campaign = str(uuid.uuid4())
    await store.append(f"user-{user}", [ev("user.created", id=user, name="ann")])
    await store.append(
        f"user-{user}", [ev("token.issued", token_hash="h1"), ev("token.issued", token_hash="h2")]
    )
    await store.append(f"user-{user}", [ev("token.revoked", token_hash="h1")])
    await store.append(
        f"campaign-{campaign}", [ev("campaign.created", id=campaign, user_id=user, name="Q3")]
    )
    await store.append(
        f"campaign-{campaign}", [ev("node.added", id="n1", name="intro", position=0)]
    )
    for n in range(3):
        sid = str(uuid.uuid4())
        run_id = f"run_{uuid.uuid4().hex}"
        session, run = f"session-{sid}", f"run-{run_id}"
        await store.append(session, [session_created(sid, user, campaign)])
        await store.transact(
            [
                AppendRequest(
                    session, (ev("run.claimed", run_id=run_id, kind="turn", task_status="chat"),)
                ),
                AppendRequest(
                    run,
                    (
                        ev(
                            "run.created",
                            correlation_id=session,
                            run_id=run_id,
                            kind="turn",
                            session_id=sid,
                            user_id=user,
                        ),
                    ),
                ),
            ]
        )
        await store.append(
            run,
            [
                ev("run.started", correlation_id=session),
                ev("examples.progress", correlation_id=session, done=1, total=2),
            ],
        )
        await store.append(
            session,
            [
                ev("message.appended", role="user", content=f"hi {n}"),
                ev("skeleton.revised", skeleton={"steps": [n]}),
                ev("skeleton.revised", skeleton={"steps": [n, n]}),
                ev("draft.revised", draft_subject="s", draft_body="b"),
                ev("examples.generated", examples=[{"lead_id": "l1"}], replace=True),
            ],
        )
        if n != 1:
            terminal = ev("run.completed", correlation_id=session, output={"ok": n})
            await store.transact(
                [
                    AppendRequest(run, (terminal,)),
                    AppendRequest(
                        session, (ev("run.released", run_id=run_id, outcome="completed"),)
                    ),
                ]
            )
        if n == 2:
            await store.append(session, [ev("session.deleted")])
    await store.append(f"campaign-{campaign}", [ev("campaign.deleted")])


KINDS = ("session", "run", "campaign", "user", "token")


async def all_docs(store: EventStore) -> dict[str, list[Doc]]:
    return {kind: await store.list_docs(kind, include_deleted=True) for kind in KINDS}


async def test_rebuild_reproduces_identical_documents(store: EventStore) -> None:
    await seed_every_projection(store)
    before = await all_docs(store)
    assert all(before[kind] for kind in KINDS), {k: len(v) for k, v in before.items()}
    assert any(d.index.active for d in before["session"])
    assert any(d.index.deleted for d in before["token"])
    count = await store.rebuild()
    assert count == await store.head_position()
    after = await all_docs(store)
    assert after == before
    for doc in after["session"]:
        assert await store.get_doc("session", doc.key) == doc
        events = await store.read_stream(f"session-{doc.key}")
        assert fold(SessionProjection(), events) == doc.body
        assert (doc.version, doc.position) == (events[-1].version, events[-1].position)


async def test_snapshots_every_n_session_events(store_factory: StoreFactory) -> None:
    store = await store_factory(snapshot_every=5)
    sid = str(uuid.uuid4())
    session = f"session-{sid}"
    await store.append(session, [session_created(sid)])
    for i in range(11):
        await store.append(session, [ev("session.patched", fields={"title": f"t{i}"})])
    run = f"run-{uuid.uuid4().hex}"
    for _ in range(12):
        await store.append(run, [ev("run.started")])
    events = await store.read_stream(session)
    assert len(events) == 12
    projection = SessionProjection()

    async def check() -> None:
        latest = await store.latest_snapshot(session, "session")
        assert latest is not None
        version, position, state = latest
        assert version == 10 and position == events[9].position
        assert state == fold(projection, events[:10])
        assert await store.latest_snapshot(session, "session", max_position=events[8].position) == (
            5,
            events[4].position,
            fold(projection, events[:5]),
        )
        assert (
            await store.latest_snapshot(session, "session", max_position=events[3].position) is None
        )
        assert await store.latest_snapshot(run, "run") is None
        assert await store.latest_snapshot("session-unknown", "session") is None

    await check()
    await store.rebuild()
    await check()


async def test_no_snapshots_when_disabled(store_factory: StoreFactory) -> None:
    store = await store_factory(snapshot_every=0)
    sid = str(uuid.uuid4())
    await store.append(f"session-{sid}", [session_created(sid)])
    for i in range(6):
        await store.append(f"session-{sid}", [ev("session.patched", fields={"title": str(i)})])
    assert await store.latest_snapshot(f"session-{sid}", "session") is None


async def test_reopening_keeps_the_log_and_read_models(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await seed_every_projection(store)
    before, events = await all_docs(store), await read_everything(store)
    await store.close()
    reopened = await store_factory()
    assert await read_everything(reopened) == events
    assert await all_docs(reopened) == before
    result = await reopened.append("after-reopen", [ev()])
    assert result.events[0].position == events[-1].position + 1
