"""Store contract for the reads maintenance streams with: the log by stream, rows by key.

``verify`` and ``rebuild`` hold one page and one stream whatever the size of the
log only because these two reads page by keyset in one agreed order: code
points of the stream id (then version), and of the document key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import RecordedEvent, canonical_json
from tests.contract.test_store_contract import ev


async def test_read_by_stream_pages_in_stream_then_version_order(store: EventStore) -> None:
    # appended interleaved, with ids whose code-point order is not their byte-naive
    # "looks alphabetical" order (upper case before lower, "é" after "z")
    names = ["b", "a", "Z", "é", "a-1", "z"]
    for round_ in range(3):
        for name in names:
            await store.append(f"campaign-{name}", [ev(n=round_)])
    head = await store.head_position()
    everything = [e async for e in _paged(store, 4, None)]
    expected = sorted([(f"campaign-{n}", v) for n in names for v in (1, 2, 3)], key=lambda sv: sv)
    assert [(e.stream_id, e.version) for e in everything] == expected
    assert sorted(e.position for e in everything) == list(range(1, head + 1))
    # to_position leaves out what came later, in every stream
    cut = [e async for e in _paged(store, 5, head - len(names))]
    assert [(e.stream_id, e.version) for e in cut] == [sv for sv in expected if sv[1] < 3]
    # a mark after the last stream reads nothing
    assert await store.read_by_stream(("campaign-\U0010ffff", 0), limit=10) == []


async def _paged(
    store: EventStore, size: int, to_position: int | None
) -> AsyncIterator[RecordedEvent]:
    mark = ("", 0)
    while page := await store.read_by_stream(mark, limit=size, to_position=to_position):
        assert len(page) <= size
        for event in page:
            yield event
        mark = (page[-1].stream_id, page[-1].version)


async def test_scan_docs_pages_every_row_of_a_kind_in_key_order(store: EventStore) -> None:
    names = ["b", "a", "Z", "é", "a-1", "z"]
    for name in names:
        await store.append(
            f"campaign-{name}", [ev("campaign.created", id=name, user_id="u1", name=name)]
        )
    await store.append(
        "campaign-b", [ev("campaign.deleted", id="b")]
    )  # deleted rows are scanned too
    seen: list[str] = []
    after: str | None = None
    while page := await store.scan_docs("campaign", after=after, limit=4):
        assert len(page) <= 4 and all(d.kind == "campaign" for d in page)
        seen.extend(d.key for d in page)
        after = page[-1].key
    assert seen == sorted(names)
    assert await store.scan_docs("session", limit=10) == []
    stored = await store.get_doc("campaign", "b")
    assert stored is not None
    assert (await store.scan_docs("campaign", after="a-1", limit=1))[0] == stored


async def test_read_by_stream_ends_a_page_at_its_byte_budget(store: EventStore) -> None:
    for n in range(6):
        await store.append("campaign-big", [ev(text="x" * (100 * (n + 1)))])
    await store.append("campaign-small", [ev(text="y")])
    everything = await store.read_by_stream(limit=100)

    def size(event: RecordedEvent) -> int:  # the stored JSON, as the store sums it
        return len(canonical_json(event.data)) + len(canonical_json(event.metadata))

    budget = size(everything[0]) + size(everything[1]) + 10
    mark, pages = ("", 0), []
    while page := await store.read_by_stream(mark, limit=100, max_bytes=budget):
        pages.append([e.version for e in page])
        assert sum(size(e) for e in page) <= budget or len(page) == 1
        mark = (page[-1].stream_id, page[-1].version)
    assert [v for p in pages for v in p] == [e.version for e in everything]
    assert pages[0] == [1, 2]  # the third would pass the budget
    assert len(pages) > 3 and [1] in pages[2:]  # a lone event larger than the budget still comes
