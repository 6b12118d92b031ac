"""The Merkle tree over the global log (RFC 6962 / RFC 9162 section 2.1), pure.

Leaf ``i`` is the event at position ``i + 1``; its leaf data is the 32 bytes
of that event's stored hash, so a leaf commits to everything the stream's
hash chain commits to, and the tree adds what the chains cannot: the order
of the whole log and its length. An edit with the chain recomputed, a
truncated tail, a removed stream or a reordering all change the root.

Storage is the shell's business (``eventstore/tree.py``): it keeps the hash
of every complete, aligned subtree of ``2**STORED_LEVEL`` leaves or more, and
recomputes smaller ones from the events' hashes. So an aligned block
``(level, index)`` covering leaves ``[index * 2**level, (index + 1) * 2**level)``
is the unit here: proofs are planned as lists of leaf ranges, each range
split into blocks, and the blocks' hashes looked up in one go. That keeps a
proof on a 10^6-event log at two indexed reads whatever its size.

The verifiers at the bottom follow RFC 9162 sections 2.1.3.2 and 2.1.4.2
word for word; ``verify-export`` relies on them, the tests check them
against an independent implementation of section 2.1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: subtrees of 2**STORED_LEVEL leaves and up are stored; smaller ones are refolded
#: from the events (64 hashes at most), which keeps the stored nodes at 1/32 of the log.
#: At 4 (1/8) the nodes were 4.5% of a turn's bytes (277 of 6,200 on a 10^5 log) for
#: proofs of about a millisecond; refolding 64 leaves instead of 16 costs a proof
#: tens of microseconds (docs/explanation/scale.md, "The Merkle tree's stored levels")
STORED_LEVEL = 6

Block = tuple[int, int]  # (level, index): leaves [index << level, (index + 1) << level)
Range = tuple[int, int]  # leaves [start, end)
Completed = tuple[int, int, bytes]  # a block to store: (level, index, hash)

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def event_leaf(event_hash: str) -> bytes:
    """The leaf hash of one event: its stored hex hash as 32 bytes."""
    return leaf_hash(bytes.fromhex(event_hash))


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def blocks(start: int, end: int) -> list[Block]:
    """The aligned blocks of a proof range, largest first.

    A range in a proof starts at a multiple of a power of two at least its
    length, so its hash is the right fold of these blocks (RFC 9162's split
    at the largest power of two, applied until nothing is left).
    """
    out: list[Block] = []
    while start < end:
        size = 1 << ((end - start).bit_length() - 1)
        if start % size:
            raise ValueError(f"range [{start}, {end}) is not aligned")
        out.append(((size.bit_length() - 1), start // size))
        start += size
    return out


def fold_blocks(hashes: Sequence[bytes]) -> bytes:
    """The hash of a range from its blocks' hashes (largest first)."""
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The ranges whose hashes make PATH(index, D[0:size]), leaf side first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    path: list[Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append((lo + k, hi))
            hi = lo + k
        else:
            path.append((lo, lo + k))
            lo += k
    path.reverse()
    return path


def consistency_ranges(old: int, new: int) -> list[Range]:
    """The ranges whose hashes make PROOF(old, D[0:new]) (RFC 9162 2.1.4.1)."""
    if not 0 < old <= new:
        raise ValueError(f"no consistency proof from {old} to {new}")
    out: list[Range] = []

    def subproof(m: int, lo: int, hi: int, whole: bool) -> None:
        n = hi - lo
        if m == n:
            if not whole:
                out.append((lo, hi))
            return
        k = _split(n)
        if m <= k:
            subproof(m, lo, lo + k, whole)
            out.append((lo + k, hi))
        else:
            subproof(m - k, lo + k, hi, False)
            out.append((lo, lo + k))

    if old < new:
        subproof(old, 0, new, True)
    return out


def needed_blocks(ranges: Sequence[Range]) -> set[Block]:
    return {b for r in ranges for b in blocks(*r)}


def resolve(ranges: Sequence[Range], hashes: Mapping[Block, bytes]) -> list[bytes]:
    """The hashes of ``ranges``, given their blocks' hashes."""
    return [fold_blocks([hashes[b] for b in blocks(*r)]) for r in ranges]


def block_from_leaves(leaves: Sequence[bytes]) -> bytes:
    """The hash of a complete block (a power of two of leaf hashes)."""
    level = list(leaves)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (small exports; the store grows a ``Frontier`` instead)."""
    if not leaves:
        return EMPTY_ROOT
    parts = blocks(0, len(leaves))
    return fold_blocks([block_from_leaves(leaves[i << lv : (i + 1) << lv]) for lv, i in parts])


@dataclass(slots=True)
class Frontier:
    """The right edge of a growing tree: one complete block per set bit of ``size``.

    Appending a leaf costs one hash plus one per carry; the blocks that
    complete at ``STORED_LEVEL`` or above come back to be stored.
    """

    size: int = 0
    #: the blocks of ``blocks(0, size)``, largest first, as (level, hash)
    edge: list[tuple[int, bytes]] | None = None

    def __post_init__(self) -> None:
        if self.edge is None:
            self.edge = []

    def append(self, leaf: bytes, completed: list[Completed]) -> None:
        edge = self.edge
        assert edge is not None
        level, h, index = 0, leaf, self.size
        while edge and edge[-1][0] == level:
            h = node_hash(edge.pop()[1], h)
            level += 1
            index >>= 1
            if level >= STORED_LEVEL:
                completed.append((level, index, h))
        edge.append((level, h))
        self.size += 1

    def root(self) -> bytes:
        assert self.edge is not None
        if not self.edge:
            return EMPTY_ROOT
        return fold_blocks([h for _, h in self.edge])


def grow(frontier: Frontier, event_hashes: Sequence[str]) -> tuple[Frontier, list[Completed]]:
    """The frontier after these events' leaves, and the blocks they complete at
    ``STORED_LEVEL`` or above; ``frontier`` itself is left as it was.

    The same hashes as ``Frontier.append`` leaf by leaf, computed a level at a
    time: each level is one comprehension, about half the interpreter's work,
    and integrating runs beside the appends (``eventstore/tree.py``).
    """
    sha = hashlib.sha256
    nodes = [sha(b"\x00" + bytes.fromhex(h)).digest() for h in event_hashes]
    assert frontier.edge is not None
    old_edge = dict(frontier.edge)  # one block per set bit of the size: levels are unique
    new_edge: dict[int, bytes] = {}
    completed: list[Completed] = []
    level, first = 0, frontier.size  # the index, at this level, of nodes[0]
    while nodes:
        if first & 1:  # its left sibling is the edge's block at this level
            nodes.insert(0, old_edge.pop(level))
            first -= 1
        if len(nodes) & 1:
            new_edge[level] = nodes.pop()
        pairs = zip(nodes[::2], nodes[1::2], strict=True)
        nodes = [sha(b"\x01" + a + b).digest() for a, b in pairs]
        level, first = level + 1, first >> 1
        if level >= STORED_LEVEL:
            completed.extend((level, first + i, h) for i, h in enumerate(nodes))
    edge = sorted({**old_edge, **new_edge}.items(), reverse=True)
    return Frontier(frontier.size + len(event_hashes), edge), completed


# -- verifiers: RFC 9162 section 2.1.3.2 and 2.1.4.2, step by step -----------------


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    if old == new:
        return not proof and old_root == new_root
    if old == 0 or old > new or not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
