"""The Merkle tree over the log, on every backend, checked against RFC 9162 section 2.1.

Everything that judges a proof here is written in this file from the RFC's
text (the definitions of MTH, PATH and PROOF in 2.1.1-2.1.4, and the
verification algorithms of 2.1.3.2 and 2.1.4.2), not imported from
``eventstore/merkle.py``: the code under test only produces (``merkle.grow``
is called here only to judge what it produces).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import pytest

from sessionstream.core.errors import ValidationFailed
from sessionstream.eventstore import merkle, tree
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import NewEvent


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def k_of(n: int) -> int:
    """The largest power of two smaller than n (2.1.1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: list[bytes]) -> bytes:
    """MTH(D[n]) of 2.1.1, over leaf *data* (the events' hashes as bytes)."""
    if not d:
        return sha(b"")
    if len(d) == 1:
        return sha(b"\x00" + d[0])
    k = k_of(len(d))
    return sha(b"\x01" + mth(d[:k]) + mth(d[k:]))


def path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of 2.1.3.1."""
    if len(d) == 1:
        return []
    k = k_of(len(d))
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of 2.1.4.1."""
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = k_of(n)
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


def rfc_verify_inclusion(
    leaf_index: int, tree_size: int, leaf: bytes, proof: list[bytes], root: bytes
) -> bool:
    """2.1.3.2, step by step (``leaf`` is the leaf hash)."""
    if leaf_index >= tree_size:
        return False
    fn, sn, r = leaf_index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = sha(b"\x01" + p + r)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def rfc_verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, proof: list[bytes]
) -> bool:
    """2.1.4.2, step by step."""
    if first == second:
        return not proof and first_hash == second_hash
    if not proof:
        return False
    if first & (first - 1) == 0:
        proof = [first_hash, *proof]
    fn, sn = first - 1, second - 1
    while fn % 2 == 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr = sha(b"\x01" + c + fr)
            sr = sha(b"\x01" + c + sr)
            if fn % 2 == 0:
                while fn % 2 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = sha(b"\x01" + sr + c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0


async def fill(store: EventStore, batches: int) -> list[bytes]:
    for i in range(batches):
        await store.append(
            f"s-{i % 5}", [NewEvent("x", {"i": i, "j": j}) for j in range(i % 4 + 1)]
        )
    return [bytes.fromhex(e.hash) for e in await store.read_all(0, limit=100_000)]


async def test_roots_and_proofs_are_the_rfcs(store: EventStore) -> None:
    data = await fill(store, 130)  # 325 events: several stored levels and ragged edges
    n = len(data)
    assert n > 4 << merkle.STORED_LEVEL
    assert await store.tree.integrate() == n
    for size in (1, 2, 3, 15, 16, 17, 33, 63, 64, 65, 127, 128, 129, 256, 257, n - 1, n):
        root = await store.tree.root(size)
        assert root == mth(data[:size])
        for index in sorted({0, 1, size // 3, size // 2, size - 1} & set(range(size))):
            proof = await store.tree.inclusion(index + 1, size)
            assert proof == path(index, data[:size])
            leaf = sha(b"\x00" + data[index])
            assert rfc_verify_inclusion(index, size, leaf, proof, root)
            if size > 1:  # a proof for another leaf, or a changed root, is refused
                other = sha(b"\x00" + data[(index + 1) % size])
                assert not rfc_verify_inclusion(index, size, other, proof, root)
        for old in sorted({1, 2, 7, 16, size // 2 or 1, size} & set(range(1, size + 1))):
            proof = await store.tree.consistency(old, size)
            assert proof == subproof(old, data[:size], True)
            assert rfc_verify_consistency(old, size, mth(data[:old]), root, proof)
            if old < size:
                wrong = mth([b"\x00" * 32, *data[1:old]])
                assert not rfc_verify_consistency(old, size, wrong, root, proof)


async def test_integrating_in_steps_is_integrating_at_once(store: EventStore) -> None:
    """The tree grows with the log: sizes reached in pieces give the same nodes."""
    data = await fill(store, 5)
    assert await store.tree.integrate() == len(data)
    data = await fill(store, 30)
    assert await store.tree.integrate(len(data) - 3) == len(data) - 3
    assert await store.tree.integrate() == len(data)
    assert await store.tree.root(len(data)) == mth(data)
    for index in (0, len(data) // 2, len(data) - 1):
        assert await store.tree.inclusion(index + 1, len(data)) == path(index, data)


async def test_a_proof_past_the_head_is_refused(store: EventStore) -> None:
    data = await fill(store, 3)
    with pytest.raises(ValidationFailed):
        await store.tree.consistency(1, len(data) + 1)


def test_a_frontier_grown_in_two_pieces_has_the_rfcs_root_and_blocks() -> None:
    """``merkle.grow`` folds a level at a time: every split point of a ragged log gives
    MTH of both prefixes, and exactly the new aligned blocks of the stored levels."""
    data = [sha(i.to_bytes(2, "big")) for i in range(4 << merkle.STORED_LEVEL | 5)]
    for cut in range(len(data) + 1):
        first, _ = merkle.grow(merkle.Frontier(), [d.hex() for d in data[:cut]])
        second, completed = merkle.grow(first, [d.hex() for d in data[cut:]])
        assert first.size == cut and first.root() == mth(data[:cut])
        assert second.size == len(data) and second.root() == mth(data)
        expected = {
            (level, index)
            for level in range(merkle.STORED_LEVEL, merkle.STORED_LEVEL + 3)
            for index in range(len(data) >> level)
            if (index + 1) << level > cut
        }
        assert {(level, index) for level, index, _ in completed} == expected
        for level, index, h in completed:
            assert h == mth(data[index << level : (index + 1) << level])


async def test_integrating_page_by_page_is_the_rfcs_tree(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tree, "PAGE", 7)  # pages that end anywhere in a block
    data = await fill(store, 60)  # 150 events: two stored blocks and a ragged edge
    assert len(data) > 2 << merkle.STORED_LEVEL
    assert await store.tree.integrate() == len(data)
    assert await store.tree.root(len(data)) == mth(data)
    for index in (0, 16, 64, 100, len(data) - 1):
        assert await store.tree.inclusion(index + 1, len(data)) == path(index, data)


async def test_integrating_stops_at_the_head_it_found(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append landing while a page is read waits for the next integration: following
    the head instead would write the tree a few leaves at a time beside the appends."""
    data = await fill(store, 10)
    grow = store.tree._grow
    pages: list[int] = []

    async def grow_while_appending(
        frontier: merkle.Frontier, end: int
    ) -> tuple[merkle.Frontier, list[merkle.Completed]]:
        pages.append(frontier.size)
        if len(pages) > 3:
            raise AssertionError("integrate followed the head")
        grown = await grow(frontier, end)
        await store.append("late", [NewEvent("x", {"page": len(pages)})])
        return grown

    monkeypatch.setattr(store.tree, "_grow", grow_while_appending)
    assert await store.tree.integrate() == len(data)
    assert pages == [0]
    monkeypatch.undo()
    assert await store.tree.integrate() == len(data) + 1  # the next one takes it


async def test_leaves_are_hashed_off_the_event_loop_and_the_writer(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    grow = merkle.grow

    def recording_grow(
        frontier: merkle.Frontier, hashes: Sequence[str]
    ) -> tuple[merkle.Frontier, list[merkle.Completed]]:
        threads.append(threading.current_thread().name)
        return grow(frontier, hashes)

    monkeypatch.setattr(merkle, "grow", recording_grow)
    data = await fill(store, 10)
    assert await store.tree.integrate() == len(data)
    assert threads
    assert threading.main_thread().name not in threads
    assert "sessionstream-writer" not in threads
