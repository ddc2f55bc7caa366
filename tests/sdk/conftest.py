from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from .sdk_fake_gateway import FakeGateway, running, timeout


@pytest_asyncio.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    """A scripted kruxos.v1 gateway listening on 127.0.0.1, port 0."""
    async with running(FakeGateway()) as fake:
        yield fake


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No KRUXOS_* variables nor a systemd credential directory leak in from the developer's shell."""
    for name in ("KRUXOS_HOST", "KRUXOS_API_KEY", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def threaded_gateway() -> Iterator[FakeGateway]:
    """The scripted gateway on an event loop in its own thread, for tests of the blocking API."""
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[FakeGateway] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def serve() -> None:
        async with running(FakeGateway()) as fake:
            started.set_result(fake)
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        yield started.result(timeout=timeout(10))
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        loop.close()
