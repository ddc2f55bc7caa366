"""Helpers for the agent-state tests: SDK agents connected to the real gateway of ``support``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from kruxos import AsyncAgent, KruxOS

from .support import RunningGateway, make_config, running_gateway, timeout


@contextlib.asynccontextmanager
async def agent(gateway: RunningGateway, key: str | None = None) -> AsyncIterator[AsyncAgent]:
    """An SDK agent connected to ``gateway`` (as alice unless ``key`` is given)."""
    async with KruxOS.connect_async(
        f"127.0.0.1:{gateway.port}", api_key=key or gateway.key, request_timeout=timeout(30)
    ) as connected:
        yield connected


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files by content hash and mode, directories and symlinks too."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if path.is_symlink():
                out[rel] = f"symlink->{os.readlink(path)}"
            elif path.is_dir():
                out[rel] = f"dir {oct(st.st_mode)}"
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[rel] = f"file {oct(st.st_mode)} {st.st_mtime_ns} {digest}"
    return out


@contextlib.contextmanager
def gateway_in_thread(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real gateway on its own event loop in a thread, for blocking (sync) agents: (address, key)."""
    ready: concurrent.futures.Future[tuple[str, str, asyncio.Event]] = concurrent.futures.Future()

    async def serve() -> None:
        try:
            async with running_gateway(make_config(tmp_path)) as gw:
                stop = asyncio.Event()
                ready.set_result((f"127.0.0.1:{gw.port}", gw.key, stop))
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="test-gateway")
    thread.start()
    try:
        address, key, stop = ready.result(timeout(30))
        yield address, key
    finally:
        if ready.done() and ready.exception() is None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout(30))
        loop.close()
