"""Per-address sliding-window limit on failed handshakes, so keys cannot be guessed online."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

MAX_TRACKED_ADDRESSES = 10_000


class HandshakeLimiter:
    """Counts failed handshakes per remote address over the last ``window`` seconds."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        horizon = self.clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or ``None`` if it is not limited."""
        failures = self._recent(address)
        if failures is None or len(failures) < self.limit:
            return None
        return max(1, math.ceil(failures[-self.limit] + self.window - self.clock()))

    def record_failure(self, address: str) -> None:
        failures = self._recent(address)
        if failures is None:
            if len(self._failures) >= MAX_TRACKED_ADDRESSES:  # forget the longest-tracked address
                del self._failures[next(iter(self._failures))]
            failures = self._failures[address] = deque()
        failures.append(self.clock())
        while len(failures) > self.limit:
            failures.popleft()
