"""The event-loop thread behind the blocking API.

The sync ``Agent`` runs the very same asyncio driver on a private event loop in a daemon thread and
blocks on its results. Why not websockets' sync client plus a reader thread: one driver means one
implementation of request matching, timeouts, event delivery and error translation; many requests can
still be in flight at once (from several threads); and the blocking API also works where an event loop
is already running in the calling thread (Jupyter, async frameworks).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from kruxos.errors import ConfigurationError, ConnectionClosed

__all__ = ["Portal"]

T = TypeVar("T")


class Portal:
    """An event loop running in its own thread; :meth:`run` executes a coroutine there and blocks."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kruxos-sync", daemon=True)
        self._thread.start()
        self._stopped = False

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop thread and return its result (or raise its exception)."""
        if self._stopped:
            coroutine.close()
            raise ConnectionClosed("the connection is closed: this agent was disconnected")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise ConfigurationError("a blocking KruxOS call was made from inside the SDK's own event loop")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: don't leave the request running
            raise

    def stop(self) -> None:
        """Stop the loop and join its thread; later :meth:`run` calls raise ConnectionClosed."""
        if self._stopped:
            return
        self._stopped = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()
