"""The ``ModelEngine`` protocol every engine implements.

A run asks an engine for one chat turn (a stream of items) or one per-lead
example. Engines never touch the log: the run engine in ``services/runs.py``
turns their items into events, so any engine gets durability, streaming and
resumption for free.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Template variables the model may emit when a turn gives no ``availableVarNames``.
DEFAULT_VAR_NAMES: tuple[str, ...] = (
    "first_name",
    "last_name",
    "full_name",
    "company",
    "position",
)


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # "user" | "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class TurnInput:
    """Everything an engine may read for one chat turn."""

    message: str
    history: tuple[Message, ...]  # earlier messages, oldest first, without ``message``
    skeleton: dict[str, Any] | None
    framework_version: int
    draft_subject: str | None
    draft_body: str | None
    available_vars: tuple[str, ...] = DEFAULT_VAR_NAMES
    sample_leads: tuple[dict[str, Any], ...] = ()
    sequence_context: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the assistant's reply; the deltas of a turn concatenate to it."""

    text: str


@dataclass(frozen=True, slots=True)
class SkeletonUpdate:
    skeleton: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DraftUpdate:
    subject: str
    body: str


StreamItem = TextDelta | SkeletonUpdate | DraftUpdate


@dataclass(frozen=True, slots=True)
class ExampleInput:
    """One lead to write a sample email for, from the session's framework."""

    lead: dict[str, Any]  # documented lead shape; ``lead_id`` always set
    skeleton: dict[str, Any]
    draft_subject: str | None
    draft_body: str | None
    available_vars: tuple[str, ...] = DEFAULT_VAR_NAMES
    sequence_context: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ExampleResult:
    lead_id: str
    subject: str
    body: str
    #: variables that could not be resolved from the lead and got a fallback
    missing: tuple[str, ...] = field(default=())


def served_by(engine: ModelEngine) -> dict[str, str | None]:
    """What a run records of the engine that served it: ``{"engine", "model"}``."""
    return {"engine": engine.name, "model": engine.model}


class ModelEngine(Protocol):
    name: str

    @property
    def model(self) -> str | None:
        """The provider's model, or None for an engine with no model to name. Recorded on
        each run, so an auditor (and the console's runs list) can tell what wrote a reply."""
        ...

    def turn(self, inp: TurnInput) -> AsyncIterator[StreamItem]:
        """Stream one assistant turn. Raise ``EngineError`` on provider failure."""
        ...

    async def example(self, inp: ExampleInput) -> ExampleResult:
        """Write one personalised example email for ``inp.lead``."""
        ...

    async def aclose(self) -> None: ...
