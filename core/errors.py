"""The one exception root and its meaningful subclasses.

Every layer raises these; one middleware in ``server/`` maps them to an HTTP
status and the JSON error body, so handlers never build error responses by hand.
"""

from __future__ import annotations

from typing import Any


class SessionStreamError(Exception):
    """Root of every error sessionstream raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ValidationFailed(SessionStreamError):
    status = 400
    code = "validation_error"


class Unauthorized(SessionStreamError):
    status = 401
    code = "unauthorized"


class Forbidden(SessionStreamError):
    status = 403
    code = "forbidden"


class NotFound(SessionStreamError):
    status = 404
    code = "not_found"


class Conflict(SessionStreamError):
    status = 409
    code = "conflict"


class SessionBusy(Conflict):
    code = "session_busy"


class ConcurrencyConflict(Conflict):
    """An append's ``expected_version`` did not match the stream's version."""

    code = "concurrency_conflict"

    def __init__(self, stream_id: str, expected: int | None, actual: int) -> None:
        super().__init__(
            f"stream {stream_id} is at version {actual}, expected {expected}",
            details={"stream_id": stream_id, "expected": expected, "actual": actual},
        )
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class LeaseLost(Conflict):
    """A run write carried a lease epoch that is no longer its run's: another node
    took the run over (``eventstore/leases.py``), so this writer is fenced off."""

    code = "lease_lost"

    def __init__(self, run_id: str, epoch: int) -> None:
        super().__init__(
            f"run {run_id} is no longer leased at epoch {epoch}: another node owns it",
            details={"run_id": run_id, "epoch": epoch},
        )
        self.run_id = run_id
        self.epoch = epoch


class PreconditionFailed(SessionStreamError):
    status = 412
    code = "precondition_failed"


class PayloadTooLarge(SessionStreamError):
    status = 413
    code = "payload_too_large"


class QuotaExceeded(SessionStreamError):
    """The write would take its user past ``SESSIONSTREAM_USER_QUOTA_BYTES``; nothing is written."""

    status = 413
    code = "quota_exceeded"


class RetryLater(SessionStreamError):
    """Refused for now, not for good: the answer carries ``Retry-After`` (``server/errors.py``)."""

    def __init__(self, message: str, *, retry_after: float = 1.0, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class RateLimited(RetryLater):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after, details={"retry_after": retry_after})


class StorageUnavailable(RetryLater):
    """The log cannot be written (read-only file, full disk, lost database).

    A 503 with ``Retry-After``: storage often comes back by itself (a
    database failover takes seconds), so clients are told when to try again.
    """

    status = 503
    code = "storage_unavailable"


class OutcomeUnknown(StorageUnavailable):
    """Storage went away while a write's commit was in flight and did not come back in time.

    Unlike every other 503 the write may have landed: the commit was sent and
    its answer lost. Retrying blindly could apply it twice (a second turn, a
    second revision), so the client is told to read first.
    """

    code = "outcome_unknown"


class Overloaded(RetryLater):
    """More work is waiting than the server will queue: refused before anything is written."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after, details={"retry_after": retry_after})


class EngineError(SessionStreamError):
    """A model engine failed; the run ends as ``run.failed`` with this reason."""

    status = 502
    code = "engine_error"


class ConfigError(SessionStreamError):
    """A setting that cannot be used, found at start-up before anything is served.

    Library code raises it and never exits: the CLI prints the message as one line
    and exits 2, while code that builds settings itself (tests, benchmarks) can
    catch it like any other error. The message names the variable (or flag).
    """

    code = "config_error"


class StoreInUse(ConfigError):
    """Another server already serves this SQLite file (``eventstore/sqlite/files.py``).

    A ConfigError because the remedy is the same as for a bad setting: the CLI
    prints the one line, which names the holder, and exits 2 before serving.
    """

    code = "store_in_use"
