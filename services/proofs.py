"""Signed checkpoints and Merkle proofs over the log, for auditors who trust no server.

A checkpoint is recorded on demand (``sessionstream checkpoint``, an export)
and periodically by the server (``checkpoints`` below, every
``checkpoint_interval_s``), and every one is kept: an auditor holding an old
one asks for a consistency proof to the new one. Proofs reveal hashes, never
data, and a user may ask only about positions that hold their own events
(the event's stream, or the session it correlates to, must be theirs), so a
proof cannot be used to probe which positions hold whose events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sessionstream.core.errors import NotFound, ValidationFailed
from sessionstream.core.secret import read_or_create
from sessionstream.core.settings import Settings
from sessionstream.core.vocabulary import (
    CAMPAIGN_PREFIX,
    RUN_PREFIX,
    SESSION_PREFIX,
    USER_PREFIX,
    stream_key,
)
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.checkpoint import Checkpoint, Signer
from sessionstream.eventstore.merkle import event_leaf
from sessionstream.eventstore.model import RecordedEvent, utc_now
from sessionstream.eventstore.tree import StoredCheckpoint
from sessionstream.services.ownership import owned

log = logging.getLogger("sessionstream.proofs")

#: the kind of read model that says who owns each kind of stream
_KINDS = ((SESSION_PREFIX, "session"), (RUN_PREFIX, "run"), (CAMPAIGN_PREFIX, "campaign"))


def load_signer(settings: Settings) -> Signer:
    """The log's signing key: the setting, or one generated beside the SQLite file (0600)."""
    if settings.log_key:
        return Signer.from_skey(settings.log_key)
    # published whole or not at all; a process that loses the race uses the winner's
    text = read_or_create(
        settings.log_key_file(),
        lambda: Signer.generate(f"sessionstream.local/{secrets.token_hex(4)}").skey() + "\n",
    )
    return Signer.from_skey(text)


async def record_checkpoint(store: EventStore, signer: Signer) -> StoredCheckpoint:
    """Integrate the tree to the head, sign its root, keep and return the checkpoint."""
    size = await store.tree.integrate()
    root = await store.tree.root(size)
    note = signer.sign(Checkpoint(signer.name, size, root))
    return await store.tree.save_checkpoint(StoredCheckpoint(size, root, note, utc_now()))


async def latest_checkpoint(store: EventStore, signer: Signer) -> StoredCheckpoint:
    """The newest kept checkpoint (one is recorded if none is)."""
    kept = await store.tree.checkpoint()
    return kept if kept is not None else await record_checkpoint(store, signer)


@dataclass(frozen=True, slots=True)
class InclusionProof:
    position: int
    size: int
    leaf: bytes
    path: tuple[bytes, ...]


async def event_at(store: EventStore, position: int) -> RecordedEvent:
    events = await store.read_all(position - 1, limit=1) if position > 0 else []
    if not events or events[0].position != position:
        raise NotFound(f"position {position} not found")
    return events[0]


async def check_owner(store: EventStore, event: RecordedEvent, user_id: str) -> None:
    """NotFound unless one of the event's streams is the user's (the message says no more)."""
    for stream_id in event.keys:
        if stream_key(stream_id, USER_PREFIX) == user_id:
            return
        for prefix, kind in _KINDS:
            key = stream_key(stream_id, prefix)
            if key is not None:
                with contextlib.suppress(NotFound):
                    await owned(store, kind, key, user_id, deleted=True)
                    return
    raise NotFound(f"position {event.position} not found")


async def inclusion(
    store: EventStore, position: int, size: int | None, user_id: str
) -> InclusionProof:
    """The audit path of one of the user's events in the tree of ``size`` (default: the
    newest checkpoint's)."""
    event = await event_at(store, position)
    await check_owner(store, event, user_id)
    if size is None:
        kept = await store.tree.checkpoint()
        size = kept.size if kept is not None and kept.size >= position else position
    if size < position:
        raise ValidationFailed(f"position {position} is not in a tree of {size} events")
    path = await store.tree.inclusion(position, size)
    return InclusionProof(position, size, event_leaf(event.hash), tuple(path))


async def consistency(
    store: EventStore, first: int, second: int, user_id: str
) -> tuple[bytes, ...]:
    """Hashes showing the tree of ``first`` events is a prefix of the tree of ``second``.

    Each size must be a kept checkpoint's (those are public) or a position
    holding one of the user's events, so no other size can be probed.
    """
    if not 0 < first <= second:
        raise ValidationFailed("a consistency proof needs 0 < first <= second")
    for size in {first, second}:
        if await store.tree.checkpoint(size) is None:
            await check_owner(store, await event_at(store, size), user_id)
    return tuple(await store.tree.consistency(first, second))


#: seconds between two integrations of the tree inside one checkpoint interval
FOLLOW_S = 5.0


@contextlib.asynccontextmanager
async def checkpoints(
    store: EventStore, signer: Signer, every_s: float
) -> AsyncIterator[asyncio.Task[None]]:
    """Record a checkpoint every ``every_s`` seconds while the context is open, and fold
    the log into the tree every ``FOLLOW_S`` between them.

    Integrating only at checkpoints made each one fold ``every_s`` of appends at
    once: 300 s of a busy log is about a million events, 13 s of hashing beside the
    appends and reads (appends taking up to 100 ms, a page of a list 40-80 ms at its
    p99, meanwhile; docs/explanation/scale.md). Folded every few seconds, each step
    is that much smaller, and a checkpoint signs a tree that is already there.
    """

    async def loop() -> None:
        clock = asyncio.get_running_loop().time
        while True:
            await record_checkpoint(store, signer)
            due = clock() + every_s
            while (left := due - clock()) > 0:
                await asyncio.sleep(min(FOLLOW_S, left))
                if clock() < due:
                    await store.tree.integrate()

    # a round that fails is logged and counted by the supervisor, which starts the loop
    # again after its backoff: the next round is never skipped for good
    task = store.supervisor.spawn("checkpoints", loop)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
