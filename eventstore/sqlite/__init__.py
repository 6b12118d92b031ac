"""The embedded default backend: one SQLite file in WAL mode.

- ``store.py``: the ``EventStore`` itself: lifecycle, the group-commit writer
  task, publishing to the hub.
- ``writer.py``: the single writer thread: each batch decided by the batch
  planner (``eventstore/batch.py``) and written in one transaction, one hop.
- ``reader.py``: reads on their own aiosqlite connections.
- ``cache.py``: documents this process just wrote, served without a hop.
- ``schema.py``: the file's tables, statements and row codecs.
"""

from sessionstream.eventstore.sqlite.store import SQLiteEventStore

__all__ = ["SQLiteEventStore"]
