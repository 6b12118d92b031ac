"""Recently written read-model documents, kept in memory by the SQLite store.

One process writes a SQLite store's log, so the documents it just wrote are
the current ones: a ``GET`` of a session is served from here without a thread
hop (ARCHITECTURE.md: for a tiny indexed read the hop costs more than the
query). The writer thread and the event loop each keep their own copy, so
neither locks. Only kinds no other process writes are kept: users and tokens
are also written by the ``sessionstream users`` command beside a running
server, and a token revoked there must stop working at once.

The loop's copy learns of a batch only once the writer thread hands the batch
back, and that is after its ``COMMIT``: in between, another reader can see the
commit in the file (a subscriber catching up reads the file, not the hub) and
its client can ask for a document the batch rewrote. So the writer *holds* the
batch's documents just before it commits (``hold``): they leave the loop's copy
and are read from the file until the loop has put the batch's own versions in
(``put_all``, then ``release``). A document read from the file meanwhile is not
cached (``put_read``): it may be the version the commit replaced.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from sessionstream.eventstore.model import Doc

#: kinds whose documents only this process writes, so they may be cached (``usage``
#: counts what users' requests appended: read by every write the quota checks)
CACHEABLE_KINDS = frozenset({"session", "run", "campaign", "usage"})


class DocCache(OrderedDict[tuple[str, str], Doc]):
    """A least-recently-used map of documents by (kind, key).

    Lookups take no lock (one dict read); changes take ``_lock``, because the
    writer thread's ``hold`` must not fall between a reader's check and its put.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        #: bumped by every ``hold``: a read that began before it may be of a replaced version
        self.epoch = 0
        #: the documents a batch is committing, not cached until the loop has its versions
        self.held: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def put(self, doc: Doc) -> None:
        with self._lock:
            self._put(doc)

    def put_all(self, docs: Iterable[Doc]) -> None:
        with self._lock:
            for doc in docs:
                self._put(doc)

    def put_read(self, doc: Doc, epoch: int) -> None:
        """A document read from the file, kept only if no batch began committing since
        ``epoch`` (read before the query) and none holds it."""
        with self._lock:
            if epoch == self.epoch and (doc.kind, doc.key) not in self.held:
                self._put(doc)

    def hold(self, idents: Iterable[tuple[str, str]]) -> None:
        """On the writer thread, just before its ``COMMIT``: these documents are read
        from the file until ``release``."""
        with self._lock:
            self.epoch += 1
            for ident in idents:
                if ident[0] in CACHEABLE_KINDS:
                    self.held.add(ident)
                    self.pop(ident, None)

    def release(self) -> None:
        """The loop has the batch's documents (or the batch failed): cache as before."""
        with self._lock:
            self.held.clear()

    def _put(self, doc: Doc) -> None:
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
