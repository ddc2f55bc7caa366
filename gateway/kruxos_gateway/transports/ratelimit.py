"""Limits on what a client without a valid key can make the gateway do.

``HandshakeLimiter``: failed handshakes per address over a sliding window, to shed the load of an
address that keeps sending bad keys (keys are 256-bit: it is not what keeps them from being guessed).
``ConnectionGate``: how many connections may be open before they authenticate.
"""

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


class ConnectionGate:
    """Caps the connections that have not authenticated yet, so that holding TCP connections open
    without a key cannot use up the gateway's file descriptors (every agent's files, pipes and
    processes need them too).

    A connection counts from its accept until its handshake proves a key (``release``) or it ends.
    Past ``total`` such connections, past ``per_address`` from one remote address, or once the
    accepted socket's descriptor number reaches ``descriptor_ceiling``, a new one is refused.
    """

    def __init__(self, total: int, per_address: int, descriptor_ceiling: int | None) -> None:
        self.total = total
        self.per_address = per_address
        self.descriptor_ceiling = descriptor_ceiling
        self.count = 0
        self._per_address: dict[str, int] = {}

    def admit(self, address: str, descriptor: int) -> str | None:
        """Count a new connection from ``address``; or, to refuse it, say why."""
        if self.count >= self.total:
            return f"{self.count} unauthenticated connections are open (limit {self.total})"
        from_address = self._per_address.get(address, 0)
        if from_address >= self.per_address:
            return f"{from_address} unauthenticated connections are open from it (limit {self.per_address})"
        # The kernel gives a new socket the lowest free descriptor, so descriptor N means N below it
        # are in use: a lower bound of how many are open, read for free. The caps above are what
        # bounds unauthenticated connections; this keeps the last descriptors for authenticated work.
        if self.descriptor_ceiling is not None and descriptor >= self.descriptor_ceiling:
            return f"descriptor {descriptor} is within the reserve kept for authenticated agents"
        self.count += 1
        self._per_address[address] = from_address + 1
        return None

    def is_full(self, address: str) -> bool:
        """Whether a new connection from ``address`` is refused for the number already waiting."""
        return self.count >= self.total or self._per_address.get(address, 0) >= self.per_address

    def release(self, address: str) -> None:
        """A connection counted for ``address`` authenticated or ended."""
        self.count -= 1
        left = self._per_address[address] - 1
        if left:
            self._per_address[address] = left
        else:
            del self._per_address[address]
