"""Token buckets, bounded in memory: requests per credential, failed logins per address."""

from __future__ import annotations

import time
from collections import OrderedDict

from sessionstream.core.errors import RateLimited


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        what: str = "requests/s for this token",
    ) -> None:
        self.rate = rate
        self.what = what
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.limited = 0

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def _refuse(self, tokens: float) -> RateLimited:
        return RateLimited(
            f"more than {self.rate:g} {self.what}; slow down",
            retry_after=(1.0 - tokens) / self.rate,
        )

    def _level(self, key: str, now: float) -> float:
        """The bucket's tokens now: what was left, refilled since, capped at the burst."""
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def refuse_if_empty(self, key: str, now: float | None = None) -> None:
        """Raise without spending: lets a caller refuse before doing the work it rates."""
        if not self.enabled or key not in self._buckets:
            return
        tokens = self._level(key, time.monotonic() if now is None else now)
        if tokens < 1.0:
            self.limited += 1
            raise self._refuse(tokens)

    def check(self, key: str, now: float | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic() if now is None else now
        tokens = self._level(key, now)
        self._buckets.pop(key, None)  # re-inserted last: the least recently seen go first
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            self.limited += 1
            raise self._refuse(tokens)
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
