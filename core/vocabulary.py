"""The event vocabulary: every event type and stream id, spelled once.

Event types are what auditors read in an export and what clients receive as
``ChatStreamEvent.type``, so a name is part of the public contract: it is
written here once and every layer refers to it by its member, never by a bare
string that a typo could silently fork. Stream ids are ``<kind>-<id>``; the
helpers below are the only place that joins or splits them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class EventType(StrEnum):
    """Every type of event the log holds (a ``StrEnum``: it compares and encodes as its text)."""

    # the user stream: accounts and their API tokens
    USER_CREATED = "user.created"
    TOKEN_ISSUED = "token.issued"
    TOKEN_REVOKED = "token.revoked"
    # the campaign stream
    CAMPAIGN_CREATED = "campaign.created"
    CAMPAIGN_DELETED = "campaign.deleted"
    NODE_ADDED = "node.added"
    # the session stream: durable results
    SESSION_CREATED = "session.created"
    #: a session's first event when it starts as a copy of another as of a position
    SESSION_FORKED = "session.forked"
    SESSION_PATCHED = "session.patched"
    SESSION_DELETED = "session.deleted"
    MESSAGE_APPENDED = "message.appended"
    SKELETON_REVISED = "skeleton.revised"
    SKELETON_ROLLED_BACK = "skeleton.rolled_back"
    DRAFT_REVISED = "draft.revised"
    DRAFT_ROLLED_BACK = "draft.rolled_back"
    EXAMPLES_GENERATED = "examples.generated"
    # the session stream: the claim a run holds while it works
    RUN_CLAIMED = "run.claimed"
    RUN_RELEASED = "run.released"
    # the run stream: what subscribers see as ChatStreamEvents
    RUN_CREATED = "run.created"
    RUN_STARTED = "run.started"
    MESSAGE_DELTA = "message.delta"
    MESSAGE_SNAPSHOT = "message.snapshot"
    MESSAGE_COMPLETED = "message.completed"
    SKELETON_UPDATED = "skeleton.updated"
    DRAFT_UPDATED = "draft.updated"
    EXAMPLE_GENERATED = "example.generated"
    EXAMPLES_PROGRESS = "examples.progress"
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_CANCELED = "run.canceled"


#: a run ends with exactly one of these, and nothing is appended to its stream after it
TERMINAL: Final = frozenset({EventType.RUN_COMPLETED, EventType.RUN_FAILED, EventType.RUN_CANCELED})

#: the run status each terminal event leaves
STATUS_AFTER: Final[dict[str, str]] = {
    EventType.RUN_COMPLETED: "completed",
    EventType.RUN_FAILED: "failed",
    EventType.RUN_CANCELED: "canceled",
}

USER_PREFIX: Final = "user-"
CAMPAIGN_PREFIX: Final = "campaign-"
SESSION_PREFIX: Final = "session-"
RUN_PREFIX: Final = "run-"


def user_stream(user_id: str) -> str:
    return f"{USER_PREFIX}{user_id}"


def campaign_stream(campaign_id: str) -> str:
    return f"{CAMPAIGN_PREFIX}{campaign_id}"


def session_stream(session_id: str) -> str:
    return f"{SESSION_PREFIX}{session_id}"


def run_stream(run_id: str) -> str:
    return f"{RUN_PREFIX}{run_id}"


def stream_key(stream_id: str, prefix: str) -> str | None:
    """The id inside ``stream_id`` when it is a ``prefix`` stream, else None."""
    return stream_id[len(prefix) :] if stream_id.startswith(prefix) else None
