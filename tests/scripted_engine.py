"""A controllable engine for tests that need to pause, fail or hang a run on cue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sessionstream.core.errors import EngineError
from sessionstream.engines.base import (
    DraftUpdate,
    ExampleInput,
    ExampleResult,
    SkeletonUpdate,
    StreamItem,
    TextDelta,
    TurnInput,
)


class ScriptedEngine:
    name = "scripted"
    model: str | None = None

    def __init__(
        self,
        words: int = 20,
        *,
        pace_s: float = 0.0,
        fail_with: str | None = None,
        gate: asyncio.Event | None = None,
        skeleton: dict[str, Any] | None = None,
    ) -> None:
        self.words = words
        self.pace_s = pace_s
        self.fail_with = fail_with
        self.gate = gate
        self.skeleton = skeleton
        self.turns = 0

    async def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        self.turns += 1
        for i in range(self.words):
            if self.gate is not None and i == self.words // 2:
                await self.gate.wait()
            yield TextDelta(f"w{i} ")
            await asyncio.sleep(self.pace_s)
        if self.fail_with:
            raise EngineError(self.fail_with)
        if self.skeleton is not None:
            yield SkeletonUpdate(self.skeleton)
            yield DraftUpdate("Hello %first_name%", "Body for %company%")

    async def example(self, inp: ExampleInput) -> ExampleResult:
        lead = inp.lead
        return ExampleResult(str(lead["lead_id"]), f"Hi {lead.get('first_name', 'there')}", "b")

    async def aclose(self) -> None:
        return None
