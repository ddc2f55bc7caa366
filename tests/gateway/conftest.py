from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from .support import RunningGateway, make_config, running_gateway


@pytest_asyncio.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    """A real gateway on loopback with default limits and an empty workspace."""
    async with running_gateway(make_config(tmp_path)) as gw:
        yield gw


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory every user can enter (pytest's tmp_path is private to root), for commands that
    run as other uids."""
    path = Path(tempfile.mkdtemp(prefix="kruxos-run-as-"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path)
