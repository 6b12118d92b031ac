"""A file whose tree was stored by a build that kept more levels (``STORED_LEVEL`` was 4,
schema 6).

The nodes below the stored levels are dropped when the store opens it, and the
roots and proofs it answers after that are still those of RFC 9162 over the
events' hashes (checked with ``merkle``'s own reference fold, ``root_of``, and
an inclusion proof verified by ``merkle.verify_inclusion``).
"""

from __future__ import annotations

from pathlib import Path

from sessionstream import projections
from sessionstream.eventstore import merkle
from sessionstream.eventstore.model import NewEvent
from sessionstream.eventstore.sqlite import SQLiteEventStore
from tests.sqlite_file import sql


def levels(path: Path) -> set[int]:
    return {level for (level,) in sql(path, "SELECT DISTINCT level FROM merkle_nodes")}


async def test_nodes_below_the_stored_levels_are_dropped_and_proofs_hold(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteEventStore(path, projections.ALL)
    await store.open()
    for i in range(300):
        await store.append(f"s-{i % 7}", [NewEvent("x", {"i": i})])
    leaves = [merkle.event_leaf(e.hash) for e in await store.read_all(0, limit=1000)]
    assert await store.tree.integrate() == len(leaves)
    await store.close()

    old = [  # what a build storing from level 4 up (schema 6) kept beside the nodes it keeps
        (level, index, merkle.root_of(leaves[index << level : (index + 1) << level]))
        for level in range(4, merkle.STORED_LEVEL)
        for index in range(len(leaves) >> level)
    ]
    for node in old:
        sql(path, "INSERT INTO merkle_nodes (level, idx, hash) VALUES (?, ?, ?)", *node)
    sql(path, "PRAGMA user_version=6")
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
