"""A finished run's document is not kept: it is folded from the run's stream when read
(``DocIndex.kept``, ``EventStore.get_doc``), on every backend.

The run stream no longer changes once it has ended, so its events (a row and
a pack, ``eventstore/packing.py``) already are the document; a row beside them
repeated the run's output. Readers, ``verify`` and ``rebuild`` see the same
document as before, and a row an older build kept is still read and checked.
"""

from __future__ import annotations

from sessionstream import projections
from sessionstream.core.readmodels import RunRow
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import DocIndex
from sessionstream.eventstore.verify import verify_store
from sessionstream.projections.run import RunProjection
from tests.contract.conftest import StoreFactory, raw_rows
from tests.contract.test_packing import RUN, end_run, write_run


class KeepingEveryRun(RunProjection):
    """The run projection of a build from before: every document kept."""

    keeps_every_doc = True

    def columns(self, state: RunRow) -> DocIndex:
        live = super().columns(state)
        return DocIndex(live.owner, live.parent, live.created_at, live.active, live.deleted)


OLDER = tuple(KeepingEveryRun() if p.kind == "run" else p for p in projections.ALL)


async def run_doc_rows(store: EventStore, backend: str, sql: str = "") -> int:
    """How many rows the docs table holds for the run (after running ``sql`` on it)."""
    if sql:
        await raw_rows(store, backend, sql)
    count = "SELECT COUNT(*) FROM docs WHERE kind = 'run' AND key = 'r1'"
    return int((await raw_rows(store, backend, count))[0][0])


async def test_a_finished_runs_document_is_folded_when_read(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await write_run(store, end=False)
    live = await store.get_doc("run", "r1")
    assert live is not None and live.body["status"] == "running"
    assert await store.stored_doc("run", "r1") == live
    await end_run(store, live.version)
    assert await run_doc_rows(store, store_factory.backend) == 0
    done = await store.get_doc("run", "r1")
    assert done is not None
    assert done.body["status"] == "completed" and done.body["output"] == "ok"
    (last,) = await store.read_stream(RUN, live.version + 1)
    assert (done.version, done.position) == (last.version, last.position)
    assert (done.index.owner, done.index.parent, done.index.active) == ("u1", "s1", False)
    assert not done.index.kept
    # a store opened afresh (nothing cached) folds the same document
    again = await store_factory()
    assert await again.stored_doc("run", "r1") is None
    assert await again.get_doc("run", "r1") == done
    assert await again.get_doc("run", "r2") is None  # no such run: no stream, no document
    report = await verify_store(again)
    assert report.ok, report.problems
    await again.rebuild()
    assert await run_doc_rows(again, store_factory.backend) == 0
    assert await again.get_doc("run", "r1") == done


async def test_a_live_runs_missing_row_is_still_a_problem(store_factory: StoreFactory) -> None:
    """Only a document the fold says is not kept may lack its row."""
    store = await store_factory()
    await write_run(store, end=False)
    deleted = "DELETE FROM docs WHERE kind = 'run' AND key = 'r1'"
    assert await run_doc_rows(store, store_factory.backend, deleted) == 0
    fresh = await store_factory()  # no cached copy of the row
    assert await fresh.get_doc("run", "r1") is None  # a read does not hide it either
    report = await verify_store(fresh)
    assert [(p.kind, p.doc_key) for p in report.problems] == [("missing_row", "r1")]


async def test_a_row_an_older_build_kept_is_read_checked_and_rebuilt_away(
    store_factory: StoreFactory,
) -> None:
    older = await store_factory(projections=OLDER)
    await write_run(older)
    kept = await older.stored_doc("run", "r1")
    assert kept is not None and kept.body["status"] == "completed"
    store = await store_factory()
    assert await store.get_doc("run", "r1") == kept
    report = await verify_store(store)
    assert report.ok, report.problems
    edit = "UPDATE docs SET owner = 'u2' WHERE kind = 'run'"
    assert await run_doc_rows(store, store_factory.backend, edit) == 1
    edited = await store_factory()
    report = await verify_store(edited)
    assert [(p.kind, p.doc_key) for p in report.problems] == [("row", "r1")]
    await edited.rebuild()
    assert await run_doc_rows(edited, store_factory.backend) == 0
    assert await edited.get_doc("run", "r1") == kept
