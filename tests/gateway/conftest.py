from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from .support import RunningGateway, make_config, running_gateway


@pytest_asyncio.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """A real gateway on loopback with default limits and an empty workspace."""
    async with running_gateway(make_config(tmp_path)) as gw:
        yield gw
