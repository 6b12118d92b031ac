"""The log's Merkle tree as stored: integrated in pages, read for proofs.

Appends do not touch the tree. It is *integrated* after the fact, as
Certificate Transparency logs do: ``integrate`` reads the events after the
tree's size up to the head it finds, grows the right edge (``merkle.grow``)
and stores every complete block of ``2**STORED_LEVEL`` leaves or more, a page
per transaction, with the new size as a compare-and-set so nodes (or
processes) racing to integrate cannot both advance it. The reading and the
hashing run off the event loop and off the append path (each backend says
where), so appending keeps its rate: ``python -m bench.append --only
sqlite-tree`` measures both in one run. The tree lags the log by at most the
checkpoint interval; a checkpoint or a proof asked for a size beyond it
integrates first.

The tree needs gapless positions (leaf ``i`` is position ``i + 1``): a store
imported from a scoped export, whose positions skip, has no tree and says so.

Each backend implements the five primitives at the bottom of ``LogTree``;
everything else is written once here.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sessionstream.core.errors import NotFound, ValidationFailed
from sessionstream.eventstore import merkle
from sessionstream.eventstore.merkle import STORED_LEVEL, Block, Completed, Frontier

#: events read per integration transaction
PAGE = 5000
#: leaves per refolded chunk: the unit below the stored levels
CHUNK = 1 << STORED_LEVEL


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str
    recorded_at: str


class LogTree(ABC):
    """The tree of one store's log, and the checkpoints signed over it."""

    async def integrate(self, up_to: int | None = None) -> int:
        """Grow the tree to the log's head as found (or to ``up_to``); returns its size.

        It stops at the first page that comes back short: the head when it was
        read. Following the head while appends go on would store a few leaves
        at a time, a write transaction beside every batch of appends.
        """
        size = await self._size()
        frontier = Frontier(size, [(lv, h) for (lv, _), h in await self._edge(size)])
        while up_to is None or frontier.size < up_to:
            end = frontier.size + PAGE if up_to is None else min(frontier.size + PAGE, up_to)
            grown, completed = await self._grow(frontier, end)
            if grown.size == frontier.size:
                break
            if not await self._extend(frontier.size, grown.size, completed):
                return await self.integrate(up_to)  # another process moved it: start over
            frontier = grown
            if grown.size < end:
                break
        return frontier.size

    async def _grow(self, frontier: Frontier, end: int) -> tuple[Frontier, list[Completed]]:
        """``frontier`` grown by the events up to position ``end`` (``merkle.grow``), and
        the blocks completed; the hashing runs on a worker thread, off the event loop."""
        hashes = await self._event_hashes(frontier.size, end)
        return await asyncio.to_thread(merkle.grow, frontier, hashes)

    async def root(self, size: int) -> bytes:
        if size == 0:
            return merkle.EMPTY_ROOT
        parts = merkle.blocks(0, size)
        found = await self.block_hashes(parts, size)
        return merkle.fold_blocks([found[b] for b in parts])

    async def inclusion(self, position: int, size: int) -> list[bytes]:
        """The audit path of the event at ``position`` in the tree of ``size``."""
        if not 0 < position <= size:
            raise ValidationFailed(f"position {position} is not in a tree of {size} events")
        await self._covered(size)
        ranges = merkle.inclusion_ranges(position - 1, size)
        found = await self.block_hashes(merkle.needed_blocks(ranges), size)
        return merkle.resolve(ranges, found)

    async def consistency(self, old: int, new: int) -> list[bytes]:
        if not 0 < old <= new:
            raise ValidationFailed("a consistency proof needs 0 < first size <= second size")
        await self._covered(new)
        ranges = merkle.consistency_ranges(old, new)
        found = await self.block_hashes(merkle.needed_blocks(ranges), new)
        return merkle.resolve(ranges, found)

    async def block_hashes(self, wanted: Iterable[Block], size: int) -> dict[Block, bytes]:
        """Stored blocks from the node table; the small ones refolded from their chunk."""
        wanted = set(wanted)
        stored = {b for b in wanted if b[0] >= STORED_LEVEL}
        found = await self._nodes(stored) if stored else {}
        if len(found) != len(stored):
            raise NotFound(f"the tree holds no node for {sorted(stored - set(found))[:3]}")
        chunks: dict[int, list[bytes]] = {}
        for level, index in wanted - stored:
            chunk = (index << level) // CHUNK
            if chunk not in chunks:
                start = chunk * CHUNK
                hashes = await self._event_hashes(start, min(start + CHUNK, size))
                chunks[chunk] = [merkle.event_leaf(h) for h in hashes]
            leaves = chunks[chunk]
            offset = (index << level) - chunk * CHUNK
            found[(level, index)] = merkle.block_from_leaves(leaves[offset : offset + (1 << level)])
        return found

    async def _edge(self, size: int) -> list[tuple[Block, bytes]]:
        parts = merkle.blocks(0, size)
        found = await self.block_hashes(parts, size)
        return [(b, found[b]) for b in parts]

    async def _covered(self, size: int) -> None:
        if size < 1:
            raise ValidationFailed("a proof needs a tree of one event or more")
        if await self._size() < size and await self.integrate(size) < size:
            raise ValidationFailed(f"the log holds fewer than {size} events")

    # what each backend implements ----------------------------------------------------
    @abstractmethod
    async def _size(self) -> int:
        """How many leaves the stored tree covers."""

    @abstractmethod
    async def _event_hashes(self, start: int, end: int) -> Sequence[str]:
        """Stored hashes of the events at positions ``start + 1 .. end``, stopping at a gap
        (``ValidationFailed`` if the first one is missing but later ones exist)."""

    @abstractmethod
    async def _nodes(self, blocks: set[Block]) -> dict[Block, bytes]: ...

    @abstractmethod
    async def _extend(self, old: int, new: int, nodes: Sequence[Completed]) -> bool:
        """Store ``nodes`` and move the size from ``old`` to ``new`` in one transaction;
        False (and nothing stored) if the size is no longer ``old``."""

    @abstractmethod
    async def save_checkpoint(self, checkpoint: StoredCheckpoint) -> StoredCheckpoint:
        """Keep a signed checkpoint; one per size (the first signed is the one kept)."""

    @abstractmethod
    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        """The checkpoint at ``size``, or the newest."""


def gap_error(position: int) -> ValidationFailed:
    return ValidationFailed(
        f"position {position} is missing: the log has gaps (imported from a scoped export), "
        "and a Merkle tree covers a gapless log only"
    )
