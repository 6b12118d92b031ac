"""What the supervision tests share: crashes to inject, and checks that nothing was lost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import NewEvent, RecordedEvent


class Once:
    """A replacement that raises ``RuntimeError`` on its ``nth`` call, else calls ``real``."""

    def __init__(self, real: Callable[..., Any], nth: int = 1) -> None:
        self.real = real
        self.nth = nth
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self.nth:
            raise RuntimeError("injected: cannot switch to state 15")
        return self.real(*args, **kwargs)


class Always:
    """A replacement that always raises (a task that can never restart)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise RuntimeError("injected: broken for good")


class Subscriber:
    """Collects everything a subscription delivers, in a task of its own."""

    def __init__(self, store: EventStore, after: int, keys: frozenset[str] | None = None) -> None:
        self.events: list[RecordedEvent] = []
        self.subscription = store.subscribe(after, keys=keys)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.subscription:
            self.events.append(event)

    async def until(self, count: int, within: float = 15.0) -> list[RecordedEvent]:
        deadline = time.monotonic() + within
        while len(self.events) < count:
            assert time.monotonic() < deadline, f"got {len(self.events)} of {count} events"
            await asyncio.sleep(0.01)
        return self.events

    async def stop(self) -> None:
        self.subscription.close()
        await asyncio.wait_for(self.task, 5)


def exactly_once(got: list[RecordedEvent], appended: list[RecordedEvent]) -> None:
    """Every appended event, once, in position order (and nothing else)."""
    assert [e.position for e in got] == [e.position for e in appended]
    assert [e.event_id for e in got] == [e.event_id for e in appended]


def crash_logged(caplog: pytest.LogCaptureFixture, task: str) -> None:
    records = [
        r
        for r in caplog.records
        if r.name == "sessionstream.supervisor"
        and r.getMessage().startswith(f"background task {task}")
        and "crashed" in r.getMessage()
    ]
    assert records, f"no crash of {task} was logged"
    assert records[0].levelno == logging.ERROR
    exc_info = records[0].exc_info
    assert exc_info is not None and isinstance(exc_info[1], RuntimeError)
    assert records[0].exc_text or exc_info[2] is not None  # the traceback travels with it


async def append_some(store: EventStore, count: int, stream: str = "s-1") -> list[RecordedEvent]:
    """``count`` appends, several in flight at once (so some share a batch)."""

    async def one(i: int) -> RecordedEvent:
        result = await store.append(stream, [NewEvent("thing.happened", {"i": i})])
        return result.events[0]

    done = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 15)
    return sorted(done, key=lambda e: e.position)


async def wait_for(predicate: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def next_heartbeat(ws: Any, within: float = 10.0) -> dict[str, Any]:
    import json

    import aiohttp

    deadline = time.monotonic() + within
    while True:
        assert time.monotonic() < deadline, "no heartbeat came"
        message = await ws.receive(timeout=within)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        frame: dict[str, Any] = json.loads(message.data)
        if frame["type"] == "heartbeat":
            return frame


async def new_session(store: EventStore) -> str:
    from sessionstream.services.accounts import RunTokens
    from sessionstream.services.campaigns import Campaigns
    from sessionstream.services.runs import RunManager
    from sessionstream.services.sessions import Sessions
    from tests.scripted_engine import ScriptedEngine

    campaigns = Campaigns(store)
    campaign = await campaigns.create_campaign("u1", "c")
    node = await campaigns.add_node("u1", campaign.key, "n", None)
    runs = RunManager(store, ScriptedEngine())
    sessions = Sessions(store, runs, RunTokens("test-secret-" * 4, 60))
    session = await sessions.create_session("u1", campaign.key, node["id"])
    return session.key
