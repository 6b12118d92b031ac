"""Byte-budgeted pages (``EventStore.read_page``), on every backend.

A page ends at its row limit or before its stored JSON passes the byte
budget, whichever comes first; an event larger than the budget still comes,
alone, so a reader always moves on. Its data is the stored text until read.
"""

from __future__ import annotations

import json

from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import NewEvent, RecordedEvent, StoredEvent, data_json

SESSION = "session-pages"


def sized(n: int) -> NewEvent:
    """An event whose data is a list of ``n`` empty objects (3 bytes each, as stored)."""
    return NewEvent("test.sized", {"items": [{}] * n}, correlation_id=None)


async def pages(store: EventStore, *, max_rows: int, max_bytes: int) -> list[list[StoredEvent]]:
    found: list[list[StoredEvent]] = []
    after = 0
    while page := await store.read_page(
        after, max_rows=max_rows, max_bytes=max_bytes, keys=frozenset({SESSION})
    ):
        found.append(page)
        after = page[-1].position
    return found


def stored_size(event: RecordedEvent) -> int:
    text = data_json(event)
    assert text is not None
    return len(text.encode()) + len(json.dumps(event.metadata, separators=(",", ":")))


async def test_a_page_ends_before_its_byte_budget_and_a_big_event_goes_alone(
    store: EventStore,
) -> None:
    await store.append("other", [sized(10)])  # not under the page's key: never counted
    sizes = [100, 100, 5000, 100, 100, 100, 20_000, 10]
    result = await store.append(SESSION, [sized(n) for n in sizes])
    budget = 4000  # three small events fit; the 15 KB and 60 KB ones exceed it alone
    got = await pages(store, max_rows=500, max_bytes=budget)

    flat = [e for page in got for e in page]
    assert flat == list(result.events)  # every event once, in order, equal to what was appended
    for page in got:
        assert len(page) == 1 or sum(stored_size(e) for e in page) <= budget
    assert [len(p) for p in got] == [2, 1, 3, 1, 1]
    assert [len(e.data["items"]) for e in got[1]] == [5000]


async def test_rows_still_bound_a_page_of_small_events(store: EventStore) -> None:
    await store.append(SESSION, [sized(1) for _ in range(7)])
    got = await pages(store, max_rows=3, max_bytes=1 << 20)
    assert [len(p) for p in got] == [3, 3, 1]


async def test_a_page_holds_its_data_as_stored_text_until_read(store: EventStore) -> None:
    await store.append(SESSION, [sized(4)])
    (event,) = await store.read_page(0, max_rows=10, max_bytes=10, keys=frozenset({SESSION}))
    text = data_json(event)
    assert text is not None and json.loads(text) == {"items": [{}, {}, {}, {}]}
    assert event.data == {"items": [{}, {}, {}, {}]}
    assert await store.read_all(0, keys=frozenset({SESSION})) == [event]


async def test_a_page_reads_up_to_to_position_and_only_its_keys(store: EventStore) -> None:
    first = await store.append(SESSION, [sized(1), sized(1)])
    await store.append("elsewhere", [sized(1)])
    await store.append(SESSION, [sized(1)])
    end = first.events[-1].position
    page = await store.read_page(
        0, max_rows=10, max_bytes=1 << 20, keys=frozenset({SESSION}), to_position=end
    )
    assert page == list(first.events)
    assert await store.read_page(0, max_rows=10, max_bytes=1, keys=frozenset()) == []


async def test_a_list_of_documents_ends_before_its_byte_budget(store: EventStore) -> None:
    titles = [10, 3000, 10, 10, 8000, 10]
    for i, n in enumerate(titles):
        created = NewEvent(
            "session.created", {"id": f"s{i}", "user_id": "u1", "campaign_id": "c1", "node_id": "n"}
        )
        patched = NewEvent("session.patched", {"fields": {"title": "t" * n}})
        await store.append(f"session-s{i}", [created, patched])
    every = await store.list_docs("session", owner="u1")
    assert [d.key for d in every] == [f"s{i}" for i in range(len(titles))]

    pages: list[list[str]] = []
    after: tuple[str, str] | None = None
    while docs := await store.list_docs(
        "session", owner="u1", after=after, limit=50, max_bytes=4000
    ):
        pages.append([d.key for d in docs])
        after = (docs[-1].index.created_at or "", docs[-1].key)
    assert [k for page in pages for k in page] == [d.key for d in every]
    # a document's body is a few hundred bytes besides its title: s0 and s1 fit in 4000,
    # s2 and s3 too, the 8 KB s4 goes alone and s5 cannot join it
    assert [len(p) for p in pages] == [2, 2, 1, 1]
    first = await store.list_docs("session", owner="u1", limit=2, max_bytes=1 << 20)
    assert [d.key for d in first] == ["s0", "s1"]  # the row limit still holds
