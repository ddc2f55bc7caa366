from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from kruxos_gateway.capabilities._cgroups import CommandCgroups

from .support import RunningGateway, make_config, running_gateway, wait_until


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


UNIFIED = [Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")]


def _writable_cgroup_parent() -> Path | None:
    for mount in UNIFIED:
        if (mount / "cgroup.procs").is_file() and os.access(mount, os.W_OK):
            return mount
    return None


@pytest.fixture
def cgroup_root() -> Iterator[Path]:
    """A cgroup (v2) directory of the test's own, standing in for the unit's delegated subtree."""
    parent = _writable_cgroup_parent()
    if parent is None:
        pytest.skip("needs a writable cgroup v2 hierarchy (root on a host with /sys/fs/cgroup)")
    root = parent / f"kruxos-test-{secrets.token_hex(4)}"
    root.mkdir()
    try:
        yield root
    finally:
        for child in root.glob("*"):
            if child.is_dir():
                CommandCgroups.kill(child)
                wait_until(lambda c=child: CommandCgroups.try_remove(c))  # type: ignore[misc]
        root.rmdir()
