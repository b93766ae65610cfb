"""Per-model call gates: `concurrent_limit` and `requests_per_minute` (design card, appendix B)."""

from __future__ import annotations

from collections import deque

from models.registry import RateLimit



class ModelGate:
    """Admits a call when fewer than `concurrent_limit` are in flight and fewer than
    `requests_per_minute` started in the last rolling window (a minute, unless a test
    shortens it)."""

    def __init__(self, limit: RateLimit, window_seconds: float = 60.0):
        self.limit = limit
        self.window = window_seconds
        self.in_flight = 0
        self._starts: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self._starts and now - self._starts[0] >= self.window:
            self._starts.popleft()

    def can_start(self, now: float) -> bool:
        if self.limit.concurrent_limit is not None and self.in_flight >= self.limit.concurrent_limit:
            return False
        rpm = self.limit.requests_per_minute
        if rpm is not None:
            self._trim(now)
            if len(self._starts) >= rpm:
                return False
        return True

    def next_window_opening(self, now: float) -> float | None:
        """When the rate window next admits a call (None when it is not what blocks)."""
        rpm = self.limit.requests_per_minute
        if rpm is None:
            return None
        self._trim(now)
        if len(self._starts) < rpm:
            return None
        return self._starts[0] + self.window

    def started(self, now: float) -> None:
        self.in_flight += 1
        self._starts.append(now)

    def finished(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
