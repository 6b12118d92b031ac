"""No background task dies silently (issue 23).

For each background task an unexpected exception (a ``RuntimeError``, never a
``SessionStreamError``) is injected once: it must be logged with its
traceback, counted in ``/metrics`` and recovered from, and every subscriber
must still get every event exactly once. A node whose pump cannot restart
answers 503 on ``/healthz`` and names it.

``test_store``: the supervisor, the store's writers, pump and checkpoints;
``test_runs``: runs and their upkeep; ``test_realtime``: realtime delivery,
heartbeats and the clients that leave a stalled node. The fixtures are in
``conftest.py``, the shared checks in ``helpers.py``.
"""
