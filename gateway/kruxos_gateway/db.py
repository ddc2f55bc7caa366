"""SQLite off the event loop: one thread owns the one connection and runs every query in turn.

The pattern is datasette's ``database.py`` write thread: coroutines submit a function of the
connection and await its result. The functions are the plain synchronous ones of ``store``, which
``kruxosctl`` calls directly, so no query is written twice. A function's writes are committed
before its result is returned, so an acknowledged write is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import store

T = TypeVar("T")
log = logging.getLogger(__name__)

_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


class Database:
    """The gateway's database, served by one dedicated thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._open_error: BaseException | None = None

    def start(self) -> None:
        """Open the database (creating the schema) on the thread; raise if it cannot be opened."""
        self._thread = threading.Thread(target=self._run, name="kruxos-db", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._open_error is not None:
            raise self._open_error

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the database thread and return its result."""
        if self._thread is None:
            raise RuntimeError("database not started")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, future, loop))
        return await future

    async def close(self) -> None:
        """Finish the queued work and close the connection."""
        if self._thread is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def _run(self) -> None:
        try:
            conn = store.connect(self.path)
        except BaseException as exc:
            self._open_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while (job := self._jobs.get()) is not None:
                fn, future, loop = job
                try:
                    result = fn(conn)
                except BaseException as exc:
                    conn.rollback()
                    _resolve(loop, future, None, exc)
                else:
                    _resolve(loop, future, result, None)
        finally:
            conn.close()


def _resolve(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: BaseException | None
) -> None:
    def settle() -> None:
        if future.cancelled():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed; nobody waits for this answer any more
        log.debug("dropped a database result: event loop closed")
