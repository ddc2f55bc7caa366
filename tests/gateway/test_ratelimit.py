"""Failed handshakes are limited per address over a sliding window."""

from __future__ import annotations

from kruxos_gateway.transports.ratelimit import HandshakeLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_limited_after_the_allowed_failures() -> None:
    clock = Clock()
    limiter = HandshakeLimiter(limit=3, window=60, clock=clock)
    for _ in range(2):
        limiter.record_failure("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") is None
    limiter.record_failure("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 60


def test_other_addresses_are_not_affected() -> None:
    limiter = HandshakeLimiter(limit=1, window=60, clock=Clock())
    limiter.record_failure("10.0.0.1")
    assert limiter.retry_after("10.0.0.2") is None


def test_the_limit_lifts_when_the_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    limiter = HandshakeLimiter(limit=2, window=60, clock=clock)
    limiter.record_failure("a")
    clock.now += 30
    limiter.record_failure("a")
    assert limiter.retry_after("a") == 30
    clock.now += 30
    assert limiter.retry_after("a") is None
