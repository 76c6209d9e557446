"""Per-client rate limits (token buckets), in memory, per replica."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class RateLimiter:
    """``per_minute`` requests a minute per key, bursts of up to ``burst``; remembers ``max_keys`` keys."""

    def __init__(self, per_minute: float, burst: int, max_keys: int = 100_000):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """0 if allowed (one token spent), else the seconds until the next token."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / self.rate if self.rate > 0 else float("inf")
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait
