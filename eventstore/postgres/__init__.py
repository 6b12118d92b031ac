"""PostgreSQL backend: several nodes, one log, the same contract as SQLite.

- ``store.py``: the ``EventStore`` itself: connections, the group-commit
  writer task, rebuilds, run leases.
- ``writer.py``: each batch decided by the batch planner
  (``eventstore/batch.py``) and written in one transaction under the
  ``log_head`` lock; imports and rebuild folds.
- ``reader.py``: reads on a connection pool.
- ``pump.py``: the log, published to this process's hub in position order.
- ``schema.py``: migrations, statements and the array codecs they take.
- ``errors.py``: driver errors as the one storage error.
"""

from sessionstream.eventstore.postgres.errors import translate_pg_error
from sessionstream.eventstore.postgres.store import PostgresEventStore

__all__ = ["PostgresEventStore", "translate_pg_error"]
