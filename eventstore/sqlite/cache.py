"""Recently written read-model documents, kept in memory by the SQLite store.

One process writes a SQLite store's log, so the documents it just wrote are
the current ones: a ``GET`` of a session is served from here without a thread
hop (ARCHITECTURE.md: for a tiny indexed read the hop costs more than the
query). The writer thread and the event loop each keep their own copy, so
neither locks. Only kinds no other process writes are kept: users and tokens
are also written by the ``sessionstream users`` command beside a running
server, and a token revoked there must stop working at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from sessionstream.eventstore.model import Doc

#: kinds whose documents only this process writes, so they may be cached (``usage``
#: counts what users' requests appended: read by every write the quota checks)
CACHEABLE_KINDS = frozenset({"session", "run", "campaign", "usage"})


class DocCache(OrderedDict[tuple[str, str], Doc]):
    """A least-recently-used map of documents by (kind, key)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, doc: Doc) -> None:
        if doc.kind not in CACHEABLE_KINDS:
            return
        ident = (doc.kind, doc.key)
        current = self.get(ident)
        if current is not None and current.position > doc.position:
            return  # a slower reader must not overwrite a newer write
        self[ident] = doc
        self.move_to_end(ident)
        while len(self) > self.size:
            self.popitem(last=False)

    def put_all(self, docs: Iterable[Doc]) -> None:
        for doc in docs:
            self.put(doc)
