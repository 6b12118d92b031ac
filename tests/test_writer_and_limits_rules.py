"""The writer's queue (group commit) and the token buckets, with exact numbers.

The rate limiter is driven by an injected clock, so refill over time, the
``Retry-After`` it answers and the one-token boundary are checked to the value.
"""

from __future__ import annotations

import asyncio

import pytest

from sessionstream.core.errors import Overloaded, RateLimited, ValidationFailed
from sessionstream.eventstore.groupcommit import GroupCommit
from sessionstream.eventstore.model import (
    GENESIS_HASH,
    AppendRequest,
    AppendResult,
    NewEvent,
    RecordedEvent,
)
from sessionstream.server.ratelimit import RateLimiter


def request(stream_id: str, n: int = 1) -> AppendRequest:
    return AppendRequest(stream_id, tuple(NewEvent("x", {"i": i}) for i in range(n)))


def result(stream_id: str, n: int, duplicate: bool = False) -> AppendResult:
    events = tuple(
        RecordedEvent(i, stream_id, i, f"e{i}", "x", {}, {}, None, "t", GENESIS_HASH)
        for i in range(1, n + 1)
    )
    return AppendResult(stream_id, events, n, duplicate)


# group commit ------------------------------------------------------------------------------


async def queued(commit: GroupCommit, n: int) -> list[asyncio.Task[list[AppendResult]]]:
    tasks = [asyncio.ensure_future(commit.submit([request(f"s-{i}")])) for i in range(n)]
    await asyncio.sleep(0)
    return tasks


async def test_a_batch_takes_at_most_max_batch() -> None:
    commit = GroupCommit(max_batch=2)
    tasks = await queued(commit, 5)
    assert commit.waiting == 5
    sizes = []
    for _ in range(3):
        batch = await commit.next_batch()
        sizes.append(len(batch))
        commit.answer(batch, [[result("s", 1)] for _ in batch])
    assert sizes == [2, 2, 1] and commit.waiting == 0
    await asyncio.wait_for(commit.drained(), 2)
    assert all(len(t.result()) == 1 for t in tasks)


async def test_the_writer_takes_each_callers_requests_in_the_order_queued() -> None:
    commit = GroupCommit(max_batch=10)
    tasks = await queued(commit, 3)
    batch = await commit.next_batch()
    assert [[r.stream_id for r in p.requests] for p in batch] == [["s-0"], ["s-1"], ["s-2"]]
    commit.answer(batch, [[result("s", 1)] for _ in batch])
    await asyncio.gather(*tasks)


async def test_answer_counts_only_new_events() -> None:
    commit = GroupCommit(max_batch=10)
    tasks = await queued(commit, 3)
    batch = await commit.next_batch()
    appended = commit.answer(
        batch,
        [
            [result("a", 2), result("b", 3, duplicate=True)],
            ValidationFailed("this one fails alone"),
            [result("c", 4)],
        ],
    )
    assert appended == 2 + 4
    assert [len(r.events) for r in await tasks[0]] == [2, 3]
    with pytest.raises(ValidationFailed):
        await tasks[1]
    assert (await tasks[2])[0].version == 4
    await asyncio.wait_for(commit.drained(), 2)


async def test_a_failed_batch_fails_every_caller() -> None:
    commit = GroupCommit(max_batch=10)
    tasks = await queued(commit, 2)
    batch = await commit.next_batch()
    tasks[0].cancel()  # a caller gone before its answer is simply skipped
    await asyncio.sleep(0)
    commit.fail(batch, Overloaded("disk full"))
    with pytest.raises(Overloaded):
        await tasks[1]
    await asyncio.wait_for(commit.drained(), 2)


async def test_answering_a_caller_that_left() -> None:
    commit = GroupCommit(max_batch=10)
    tasks = await queued(commit, 2)
    batch = await commit.next_batch()
    for task in tasks:
        task.cancel()
    await asyncio.sleep(0)
    assert commit.answer(batch, [[result("a", 1)], ValidationFailed("x")]) == 1
    await asyncio.wait_for(commit.drained(), 2)


async def test_refused_beyond_max_pending_and_counted() -> None:
    commit = GroupCommit(max_batch=10, max_pending=2)
    tasks = await queued(commit, 2)  # exactly max_pending waiting is allowed
    assert commit.waiting == 2 and commit.refused == 0
    for expected in (1, 2):
        with pytest.raises(Overloaded, match="2 appends are already waiting"):
            await commit.submit([request("late")])
        assert commit.refused == expected
    assert commit.waiting == 2
    batch = await commit.next_batch()
    commit.answer(batch, [[result("s", 1)]] * 2)
    await asyncio.gather(*tasks)


async def test_an_empty_append_is_refused_before_queueing() -> None:
    commit = GroupCommit(max_batch=10)
    with pytest.raises(ValidationFailed, match="append to s-2 has no events"):
        await commit.submit([request("s-1"), AppendRequest("s-2", ())])
    assert commit.waiting == 0 and commit.refused == 0


# the rate limiter ---------------------------------------------------------------------------


def refusal(limiter: RateLimiter, key: str, now: float) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        limiter.check(key, now)
    return caught.value


def test_a_burst_then_refill_as_time_moves() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    for _ in range(3):
        limiter.check("k", now=100.0)
    refused = refusal(limiter, "k", 100.0)
    assert refused.retry_after == pytest.approx(0.5)  # one token at 2/s
    assert limiter.limited == 1
    # 0.25 s later half a token has come back: wait for the other half
    assert refusal(limiter, "k", 100.25).retry_after == pytest.approx(0.25)
    limiter.check("k", now=100.5)  # exactly one token: allowed
    refusal(limiter, "k", 100.5)
    limiter.check("k", now=101.0)
    assert limiter.limited == 3


def test_refill_is_rate_times_elapsed_capped_at_the_burst() -> None:
    limiter = RateLimiter(rate=4.0, burst=10)
    for _ in range(10):
        limiter.check("k", now=0.0)
    for _ in range(4):  # one second at 4/s gives four tokens, not 1/4 and not 16
        limiter.check("k", now=1.0)
    assert refusal(limiter, "k", 1.0).retry_after == pytest.approx(0.25)
    for _ in range(10):  # an hour later the bucket holds the burst, no more
        limiter.check("k", now=3600.0)
    refusal(limiter, "k", 3600.0)


def test_the_one_token_boundary() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    limiter.check("k", now=0.0)
    refused = refusal(limiter, "k", 0.999)
    assert refused.retry_after == pytest.approx(0.001)
    limiter.check("k", now=1.0)  # tokens == 1.0 is enough


def test_refusal_message_and_details() -> None:
    limiter = RateLimiter(rate=0.5, burst=1, what="logins/s from this address")
    limiter.check("ip", now=0.0)
    refused = refusal(limiter, "ip", 0.0)
    assert str(refused) == "more than 0.5 logins/s from this address; slow down"
    assert refused.retry_after == pytest.approx(2.0)
    assert refused.details == {"retry_after": pytest.approx(2.0)}
    default = RateLimiter(rate=1, burst=1)
    default.check("t", now=0.0)
    assert str(refusal(default, "t", 0.0)) == "more than 1 requests/s for this token; slow down"


def test_the_least_recently_seen_key_is_evicted() -> None:
    limiter = RateLimiter(rate=0.001, burst=1, max_keys=2)
    limiter.check("a", now=0.0)
    limiter.check("b", now=0.0)
    refusal(limiter, "a", 0.0)  # a is seen again (refused): b is now the oldest
    limiter.check("c", now=0.0)  # a third key evicts b only
    assert list(limiter._buckets) == ["a", "c"]
    refusal(limiter, "a", 0.0)  # a's empty bucket was kept (and a is the newest again)
    limiter.check("b", now=0.0)  # b starts again with a full bucket; c is evicted
    assert list(limiter._buckets) == ["a", "b"]


def test_refuse_if_empty_spends_nothing() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    limiter.refuse_if_empty("new", now=0.0)  # an unseen key is never refused, nor stored
    assert "new" not in limiter._buckets
    limiter.check("k", now=0.0)
    limiter.refuse_if_empty("k", now=0.0)  # one token left: not refused, not spent
    limiter.check("k", now=0.0)
    with pytest.raises(RateLimited) as caught:
        limiter.refuse_if_empty("k", now=0.5)
    assert caught.value.retry_after == pytest.approx(0.5)
    assert limiter.limited == 1
    limiter.refuse_if_empty("k", now=1.0)
    limiter.check("k", now=1.0)


def test_a_zero_rate_disables_limiting() -> None:
    limiter = RateLimiter(rate=0, burst=0)
    assert not limiter.enabled
    for _ in range(5):
        limiter.check("k", now=0.0)
        limiter.refuse_if_empty("k", now=0.0)
    assert limiter.limited == 0 and not limiter._buckets
    assert RateLimiter(rate=0.1, burst=1).enabled


def test_the_clock_defaults_to_monotonic() -> None:
    limiter = RateLimiter(rate=0.001, burst=1)
    limiter.check("k")
    with pytest.raises(RateLimited):
        limiter.check("k")
    with pytest.raises(RateLimited):
        limiter.refuse_if_empty("k")


def test_refuse_if_empty_counts_each_refusal_and_never_refuses_an_unseen_key() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.max_keys == 100_000  # the documented memory bound
    limiter.check("k", now=0.0)
    for expected in (1, 2):
        with pytest.raises(RateLimited):
            limiter.refuse_if_empty("k", now=0.0)
        assert limiter.limited == expected
    empty = RateLimiter(rate=1.0, burst=0)  # even a bucket that starts empty:
    empty.refuse_if_empty("new", now=0.0)  # a key never seen has spent nothing
    assert empty.limited == 0


async def test_an_answer_per_caller_or_none() -> None:
    commit = GroupCommit(max_batch=10)
    tasks = await queued(commit, 2)
    batch = await commit.next_batch()
    with pytest.raises(ValueError):  # a writer bug must not leave a caller unanswered
        commit.answer(batch, [[result("a", 1)]])
    commit.fail(batch[1:], Overloaded("x"))
    await asyncio.gather(*tasks, return_exceptions=True)
