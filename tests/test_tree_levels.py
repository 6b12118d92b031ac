"""A file whose tree was stored by a build that kept more levels (``STORED_LEVEL`` was 4).

The nodes below the stored levels are dropped when the store opens, and the
roots and proofs it answers after that are still those of RFC 9162 over the
events' hashes (checked with ``merkle``'s own reference fold, ``root_of``, and
an inclusion proof verified by ``merkle.verify_inclusion``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sessionstream import projections
from sessionstream.eventstore import merkle
from sessionstream.eventstore.model import NewEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore


def levels(path: Path) -> set[int]:
    conn = sqlite3.connect(path)
    try:
        return {level for (level,) in conn.execute("SELECT DISTINCT level FROM merkle_nodes")}
    finally:
        conn.close()


async def test_nodes_below_the_stored_levels_are_dropped_and_proofs_hold(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    for i in range(300):
        await store.append(f"s-{i % 7}", [NewEvent("x", {"i": i})])
    leaves = [merkle.event_leaf(e.hash) for e in await store.read_all(0, limit=1000)]
    assert await store.tree.integrate() == len(leaves)
    await store.close()

    old = [  # what a build storing from level 4 up kept beside the nodes it keeps
        (level, index, merkle.root_of(leaves[index << level : (index + 1) << level]))
        for level in range(4, merkle.STORED_LEVEL)
        for index in range(len(leaves) >> level)
    ]
    conn = sqlite3.connect(path)
    conn.executemany("INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", old)
    conn.commit()
    conn.close()
    assert min(levels(path)) == 4

    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    try:
        assert min(levels(path)) == merkle.STORED_LEVEL
        for size in (1, 17, 64, 65, 200, len(leaves)):
            root = await store.tree.root(size)
            assert root == merkle.root_of(leaves[:size])
            for index in {0, size // 2, size - 1}:
                proof = await store.tree.inclusion(index + 1, size)
                assert merkle.verify_inclusion(index, size, leaves[index], proof, root)
    finally:
        await store.close()
