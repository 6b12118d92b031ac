"""An example batch: one sample email per lead, written from the session's framework.

Leads are written ``concurrency`` at a time (an engine call can take
seconds); each result is one ``example.generated`` and one
``examples.progress`` event as it arrives, so a subscriber sees the batch
fill in. The examples land on the session together with the terminal event,
replacing the earlier batch unless the request said it is not the first.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from sessionstream.core.errors import EngineError
from sessionstream.core.readmodels import ExamplesOutput, ExamplesRunInput, JsonObject, SessionRow
from sessionstream.core.vocabulary import EventType
from sessionstream.engines.base import (
    DEFAULT_VAR_NAMES,
    ExampleInput,
    ExampleResult,
    ModelEngine,
    served_by,
)
from sessionstream.engines.provider import stalled
from sessionstream.eventstore.base import EventStore
from sessionstream.services.ownership import session_of
from sessionstream.services.runlog import RunContext, RunStopped, append_run, durably, finish


def example_input(row: SessionRow, ask: ExamplesRunInput, lead: JsonObject) -> ExampleInput:
    return ExampleInput(
        lead=lead,
        # the claim refused a session without a skeleton, but a PATCH may have cleared it
        # since: the engines read a missing skeleton as an empty one
        skeleton=cast(JsonObject, row["skeleton"]),
        draft_subject=row["draft_subject"],
        draft_body=row["draft_body"],
        available_vars=tuple(ask.get("availableVarNames") or DEFAULT_VAR_NAMES),
        sequence_context=ask.get("sequenceContext"),
    )


async def run_examples(
    store: EventStore,
    engine: ModelEngine,
    ctx: RunContext,
    ask: ExamplesRunInput,
    *,
    concurrency: int,
    engine_timeout_s: float,
) -> None:
    doc = await durably(ctx, lambda: store.get_doc("session", ctx.claim.session_id))
    if doc is None:
        raise RunStopped
    row = session_of(doc).body["row"]
    leads = list(ask["leads"])
    total = len(leads)
    await append_run(
        store, ctx, ctx.event(EventType.RUN_STARTED, {"kind": "examples", **served_by(engine)})
    )
    await append_run(
        store, ctx, ctx.event(EventType.EXAMPLES_PROGRESS, {"done": 0, "total": total})
    )
    gate = asyncio.Semaphore(concurrency)
    lock = asyncio.Lock()
    results: list[ExampleResult | None] = [None] * total
    done = 0

    async def one(index: int, lead: JsonObject) -> None:
        nonlocal done
        async with gate:
            result = await asyncio.wait_for(
                engine.example(example_input(row, ask, lead)), timeout=engine_timeout_s
            )
        async with lock:  # one writer of the run stream at a time keeps seq exact
            results[index] = result
            done += 1
            example: dict[str, Any] = {
                "lead_id": result.lead_id,
                "subject": result.subject,
                "body": result.body,
            }
            if result.missing:
                example["missing"] = list(result.missing)
            await append_run(
                store,
                ctx,
                ctx.event(EventType.EXAMPLE_GENERATED, example),
                ctx.event(EventType.EXAMPLES_PROGRESS, {"done": done, "total": total}),
            )

    try:
        async with asyncio.TaskGroup() as group:
            for index, lead in enumerate(leads):
                group.create_task(one(index, lead))
    except* TimeoutError as eg:
        raise stalled(engine, engine_timeout_s, lead=True) from eg.exceptions[0]
    except* RunStopped as eg:
        raise RunStopped from eg.exceptions[0]
    except* EngineError as eg:
        raise eg.exceptions[0] from None
    examples = [
        {"lead_id": r.lead_id, "subject": r.subject, "body": r.body}
        for r in results
        if r is not None
    ]
    output: ExamplesOutput = {
        "examples": len(examples),
        "missing_variables": {r.lead_id: list(r.missing) for r in results if r and r.missing},
    }
    await finish(
        store,
        ctx,
        [ctx.event(EventType.RUN_COMPLETED, {"output": output})],
        [
            ctx.session_event(
                EventType.EXAMPLES_GENERATED,
                {
                    "examples": examples,
                    "replace": bool(ask.get("isFirstBatch", True)),
                    "run_id": ctx.claim.run_id,
                },
            )
        ],
    )
