"""Paged lists: keyset pages, and the opaque cursors that carry a client from one to the next.

A list page is a seek on the store's listing index to the last item the client
already has, then ``limit`` rows: no OFFSET, so page 200 costs what page 1
costs, and a document created meanwhile is neither skipped nor repeated.
Before paging, a campaign of 10,000 sessions came back in one 20 MB response
built in memory (394 ms); a page of 50 is a few milliseconds at any depth.

The cursor is the mark of the last item, ``(created_at, key)``, signed with
the server secret over the list it belongs to (kind, owner, parent). So a
cursor only means something to the list that gave it out: an edited, forged
or truncated one, or one from another user's list, is a 400 that says no
more than that, and a cursor never steers a query into rows its bearer could
not list anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from sessionstream.core.errors import ValidationFailed
from sessionstream.eventstore.base import EventStore
from sessionstream.eventstore.model import Doc

T = TypeVar("T")

#: the largest page a client may ask for
MAX_LIMIT: Final = 1000
#: documents read per query while streaming a whole list (bounded memory)
CHUNK: Final = 500
#: bytes of the HMAC kept in a cursor: forging one is 2^-128 per try
_MAC_BYTES: Final = 16
#: the position of a list item: ``(created_at, key)``, as ``list_docs`` orders
Mark = tuple[str, str]
NOT_OURS: Final = "after is not a cursor this list gave out; start the list without it"


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list, and the cursor of the next (None on the last page)."""

    items: list[T]
    next: str | None


@dataclass(frozen=True, slots=True)
class Listing:
    """Which list a query reads: a kind's documents of one owner (and parent)."""

    kind: str
    owner: str
    parent: str | None = None

    @property
    def scope(self) -> bytes:
        return f"{self.kind}\x00{self.owner}\x00{self.parent or ''}".encode()


class Cursors:
    """Signs and reads list cursors with a key derived from the server secret.

    The key is derived (not the secret itself) so a cursor and a run token
    can never be mistaken for one another, whatever they carry.
    """

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"sessionstream list cursor\x00" + secret.encode()).digest()

    def _mac(self, scope: bytes, payload: bytes) -> bytes:
        return hmac.new(self._key, scope + b"\x01" + payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, scope: bytes, mark: Mark) -> str:
        payload = f"{mark[0]}\x00{mark[1]}".encode()
        raw = self._mac(scope, payload) + payload
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def decode(self, scope: bytes, cursor: str) -> Mark:
        """The mark ``cursor`` carries, if this server gave it out for this list; else a 400."""
        refused = ValidationFailed(NOT_OURS)
        if len(cursor) > 512 or not cursor.isascii():
            raise refused
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError) as exc:
            raise refused from exc
        mac, payload = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if len(mac) < _MAC_BYTES or not hmac.compare_digest(mac, self._mac(scope, payload)):
            raise refused
        created_at, _, key = payload.decode().partition("\x00")
        return created_at, key


def mark_of(doc: Doc) -> Mark:
    return doc.index.created_at or "", doc.key


class Pager:
    """Pages and whole-list streams over the store's listing index."""

    def __init__(self, store: EventStore, cursors: Cursors) -> None:
        self.store = store
        self.cursors = cursors

    def _after(self, listing: Listing, after: str | None) -> Mark | None:
        return None if after is None else self.cursors.decode(listing.scope, after)

    async def page(
        self, listing: Listing, limit: int, after: str | None, item: Callable[[Doc], T]
    ) -> Page[T]:
        """Up to ``limit`` items after the cursor ``after``, within the store's page byte
        budget (one larger document comes alone); one more is read to know if it ends,
        and a page the budget cut looks one document further to know the same."""
        store = self.store
        docs = await store.list_docs(
            listing.kind,
            owner=listing.owner,
            parent=listing.parent,
            after=self._after(listing, after),
            limit=limit + 1,
            max_bytes=store.page_bytes,
        )
        if len(docs) > limit:
            docs = docs[:limit]
        elif not docs or not await self._more(listing, docs[-1]):
            return Page([item(d) for d in docs], None)
        return Page([item(d) for d in docs], self.cursors.encode(listing.scope, mark_of(docs[-1])))

    async def _more(self, listing: Listing, last: Doc) -> bool:
        after = mark_of(last)
        return bool(
            await self.store.list_docs(
                listing.kind,
                owner=listing.owner,
                parent=listing.parent,
                after=after,
                limit=1,
                max_bytes=0,
            )
        )

    def within(
        self,
        listing: Listing,
        items: list[T],
        limit: int,
        after: str | None,
        key: Callable[[T], str],
    ) -> Page[T]:
        """A page of a list held in one document (a campaign's nodes), by the same cursor rule."""
        start = 0
        if after is not None:
            _, last = self.cursors.decode(listing.scope, after)
            found = next((i for i, x in enumerate(items) if key(x) == last), None)
            if found is None:
                raise ValidationFailed(NOT_OURS)
            start = found + 1
        page = items[start : start + limit]
        if start + limit >= len(items):
            return Page(page, None)
        return Page(page, self.cursors.encode(listing.scope, ("", key(page[-1]))))

    async def chunks(
        self, listing: Listing, after: str | None, item: Callable[[Doc], T]
    ) -> AsyncIterator[list[T]]:
        """Every item after ``after``, ``CHUNK`` documents (and at most the store's page
        byte budget, or one larger document) in memory at a time.

        A caller that streams them reads the first chunk before it writes a
        byte, so a bad cursor or a failing store is still an error response.
        """
        mark = self._after(listing, after)
        while True:
            docs = await self.store.list_docs(
                listing.kind,
                owner=listing.owner,
                parent=listing.parent,
                after=mark,
                limit=CHUNK,
                max_bytes=self.store.page_bytes,
            )
            if not docs:
                return
            yield [item(d) for d in docs]
            mark = mark_of(docs[-1])
