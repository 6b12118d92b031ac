"""Store contract for flat costs: keyset pages, and appends that return their documents."""

from __future__ import annotations

import uuid

from sessionstream.core.vocabulary import EventType, session_stream
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import AppendRequest
from tests.contract.test_store_contract import ev, session_created


async def test_an_append_returns_the_documents_it_folded(store: EventStore) -> None:
    sid = str(uuid.uuid4())
    created = session_created(sid)
    first = await store.append(session_stream(sid), [created], 0)
    stored = await store.get_doc("session", sid)
    assert stored is not None and first.doc("session", sid) == stored
    patched = await store.append(
        session_stream(sid), [ev(EventType.SESSION_PATCHED, fields={"title": "t"})]
    )
    doc = patched.doc("session", sid)
    assert doc is not None and doc == await store.get_doc("session", sid)
    assert doc.body["row"]["title"] == "t" and doc.version == 2
    # a retry folded nothing: it says so rather than hand back a stale document
    retry = await store.append(session_stream(sid), [created], 0)
    assert retry.duplicate and retry.docs == () and retry.doc("session", sid) is None
    # every request of a transaction sees the whole group's documents
    other = str(uuid.uuid4())
    both = await store.transact(
        [
            AppendRequest(session_stream(other), (session_created(other),), 0),
            AppendRequest(session_stream(sid), (ev(EventType.SESSION_DELETED),), None),
        ]
    )
    for result in both:
        assert {d.key for d in result.docs} == {sid, other}


async def test_list_docs_pages_by_keyset(store: EventStore) -> None:
    keys = sorted(str(uuid.uuid4()) for _ in range(7))
    await store.transact(
        [AppendRequest(session_stream(k), (session_created(k),), 0) for k in keys[:4]]
    )
    for k in keys[4:]:
        await store.append(session_stream(k), [session_created(k)], 0)
    await store.append(session_stream(keys[2]), [ev(EventType.SESSION_DELETED)])
    await store.append(session_stream(str(uuid.uuid4())), [session_created("x", user="u2")], 0)
    whole = await store.list_docs("session", owner="u1", parent="c1")
    assert len(whole) == 6
    for limit in (1, 2, 5, 6, 10):
        paged, mark = [], None
        while True:
            page = await store.list_docs(
                "session", owner="u1", parent="c1", after=mark, limit=limit
            )
            assert len(page) <= limit
            paged.extend(page)
            if len(page) < limit:
                break
            mark = (page[-1].index.created_at or "", page[-1].key)
        assert paged == whole, limit
