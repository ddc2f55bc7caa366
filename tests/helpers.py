"""What every test folder shares: the repository root and bounded waiting.

Every wait in the suite is bounded by ``timeout(seconds)``, scaled by one factor from the
environment (``KRUXOS_TEST_TIMEOUT_FACTOR``, default 1) for slow machines; folders add their own
fixtures on top (``gateway/support.py``, ``sdk/sdk_fake_gateway.py``, ``guide/guide_gateway.py``,
``build/build_support.py``, ``image/image_support.py``). The repository root is on ``sys.path``
through pytest's ``pythonpath`` setting (pyproject.toml), so ``kruxos_build`` imports as it does for
``build.py``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_FACTOR = float(os.environ.get("KRUXOS_TEST_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    """A time limit for one wait, scaled for slow machines."""
    return seconds * TIMEOUT_FACTOR


def wait_until(predicate: Callable[[], bool], seconds: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until true; fail after the scaled deadline."""
    deadline = time.monotonic() + timeout(seconds)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout(seconds)} s")
        time.sleep(interval)


async def eventually(predicate: Callable[[], bool], seconds: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` without blocking the event loop; fail after the scaled deadline."""
    deadline = time.monotonic() + timeout(seconds)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout(seconds)} s")
        await asyncio.sleep(interval)
