"""``agent.state``: session, persistent and shared state, and watches of shared state.

Every read and write is the invocation of a ``state.*`` capability (so the gateway validates,
policy-checks and audits it like any other); the calls are defined once as :class:`Call` objects and
the sync namespaces run the very same coroutines through the agent's portal.

Watches use the ``state.shared.watch`` method and the ``state.changed`` event. The SDK picks each
watch's id, so changes that arrive before the watch's answer are already routed. A watch delivers
each change once, in revision order, to its callback; a callback may be a function or a coroutine
function, and is called with one :class:`~kruxos.models.StateChange`, one change at a time.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from kruxos._connection import AsyncConnection
from kruxos._protocol import Call, parse_result
from kruxos._sync import Portal
from kruxos.errors import ConfigurationError
from kruxos.models import InvocationResult, StateChange, StateEntry, StateHistory

__all__ = [
    "STATE_CHANGED",
    "AsyncPersistentState",
    "AsyncSessionState",
    "AsyncSharedState",
    "AsyncState",
    "PersistentState",
    "SessionState",
    "SharedState",
    "State",
    "Watch",
    "WatchCallback",
]

STATE_CHANGED = "state.changed"
logger = logging.getLogger("kruxos")
T = TypeVar("T")

WatchCallback = Callable[[StateChange], Awaitable[None] | None]
"""``def on_change(change: StateChange) -> None`` or ``async def on_change(change: StateChange) -> None``."""


def _state_call(capability: str, inputs: dict[str, Any], parse: Callable[[dict[str, Any]], T]) -> Call[T]:
    """A ``state.*`` capability invocation whose data is parsed by ``parse``.

    A failed invocation raises its ``CapabilityError`` (``VersionConflict`` for ``version_conflict``).
    """
    sent = {name: value for name, value in inputs.items() if value is not None}

    def read(result: dict[str, Any]) -> T:
        invocation: InvocationResult = parse_result(InvocationResult, result, "capabilities.invoke")
        return parse(invocation.data)

    return Call("capabilities.invoke", {"name": capability, "inputs": sent}, read, capability=capability)


def _key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"a state key is a non-empty string such as 'task.current', not {key!r}")
    return key


def _entry(data: dict[str, Any]) -> StateEntry:
    return StateEntry.model_validate(data)


def _version(data: dict[str, Any]) -> int:
    return int(data["version"])


def _keys(data: dict[str, Any]) -> builtins.list[str]:
    return [str(k) for k in data["keys"]]


# --- session ------------------------------------------------------------------------------------


class AsyncSessionState:
    """This connection's memory: gone when the connection ends (``await agent.state.session.…``)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def set(self, key: str, value: Any) -> int:
        """Store ``value`` (any JSON value but None) under ``key``; return the key's new version."""
        return await self._connection.call(
            _state_call("state.session.set", {"key": _key(key), "value": value}, _version)
        )

    async def get(self, key: str) -> StateEntry:
        """The entry under ``key``; ``found`` is False (not an error) if there is none."""
        return await self._connection.call(_state_call("state.session.get", {"key": _key(key)}, _entry))

    async def list(self, prefix: str = "") -> builtins.list[str]:
        """The keys of this session starting with ``prefix``, sorted."""
        return await self._connection.call(_state_call("state.session.list", {"prefix": prefix}, _keys))

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return False if it did not exist."""
        return await self._connection.call(
            _state_call("state.session.delete", {"key": _key(key)}, lambda d: bool(d["deleted"]))
        )


# --- persistent ---------------------------------------------------------------------------------


class AsyncPersistentState:
    """This agent's (API key's) durable, versioned state (``await agent.state.persistent.…``)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def set(self, key: str, value: Any) -> int:
        """Write a new version of ``key`` (on disk when this returns); return its version number."""
        return await self._connection.call(
            _state_call("state.persistent.set", {"key": _key(key), "value": value}, _version)
        )

    async def get(self, key: str, version: int | None = None) -> StateEntry:
        """The newest version of ``key``, or ``version``; ``found`` is False if there is none."""
        return await self._connection.call(
            _state_call("state.persistent.get", {"key": _key(key), "version": version}, _entry)
        )

    async def history(self, key: str, limit: int = 10) -> StateHistory:
        """The newest ``limit`` kept versions of ``key`` (``.versions``, newest first)."""
        return await self._connection.call(
            _state_call(
                "state.persistent.history", {"key": _key(key), "limit": limit}, StateHistory.model_validate
            )
        )

    async def list(self, prefix: str = "") -> builtins.list[str]:
        """This agent's persistent keys starting with ``prefix``, sorted."""
        return await self._connection.call(_state_call("state.persistent.list", {"prefix": prefix}, _keys))


# --- shared -------------------------------------------------------------------------------------


class Watch:
    """A live watch of shared keys under ``prefix``; cancel it with ``agent.state.shared.unwatch``."""

    def __init__(self, watch_id: str, prefix: str, callback: WatchCallback, from_revision: int) -> None:
        self.watch_id = watch_id
        self.prefix = prefix
        self.callback = callback
        self.last_revision = from_revision
        """The revision of the last change received; watch again ``from_revision=`` it to resume."""
        self.active = True
        self._queue: asyncio.Queue[StateChange] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None

    def _deliver(self, change: StateChange) -> None:
        if not self.active or change.revision <= self.last_revision:
            return  # a duplicate (e.g. replayed on resume)
        self.last_revision = change.revision
        self._queue.put_nowait(change)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"kruxos-{self.watch_id}")

    async def _run(self) -> None:
        """Call the callback for each queued change, one at a time, in order; then end."""
        while not self._queue.empty() and self.active:
            change = self._queue.get_nowait()
            try:
                outcome = self.callback(change)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception(
                    "the watch callback for %r failed on revision %d", self.prefix, change.revision
                )

    def __repr__(self) -> str:
        return f"<Watch {self.watch_id} prefix={self.prefix!r} last_revision={self.last_revision}>"


class AsyncSharedState:
    """State visible to every agent, with versions and watches (``await agent.state.shared.…``)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection
        self._watches: dict[str, Watch] = {}
        self._ids = itertools.count(1)
        connection.add_listener(STATE_CHANGED, self._on_changed)

    async def get(self, key: str) -> StateEntry:
        """The current entry; ``found`` False and ``version`` 0 if the key does not exist."""
        return await self._connection.call(_state_call("state.shared.get", {"key": _key(key)}, _entry))

    async def set(self, key: str, value: Any, expected_version: int | None = None) -> int:
        """Write ``key``; return its new version.

        With ``expected_version``, only if the key is still at that version (0: only if it does not
        exist); otherwise raises :class:`~kruxos.errors.VersionConflict`: re-read and retry.
        """
        inputs = {"key": _key(key), "value": value, "expected_version": expected_version}
        return await self._connection.call(_state_call("state.shared.set", inputs, _version))

    async def delete(self, key: str, expected_version: int | None = None) -> int:
        """Delete ``key`` (watchers see a change with ``deleted`` True); return the deletion's version."""
        inputs = {"key": _key(key), "expected_version": expected_version}
        return await self._connection.call(_state_call("state.shared.delete", inputs, _version))

    async def watch(
        self, prefix: str = "", *, callback: WatchCallback, from_revision: int | None = None
    ) -> Watch:
        """Call ``callback(change)`` for every change of a key under ``prefix``, in revision order.

        From now on, or, with ``from_revision``, for every change after that revision first (to
        resume after a reconnect: pass the old watch's ``last_revision``). If the gateway no longer
        keeps that history, raises ``CapabilityError`` of type ``history_trimmed``.
        """
        if not callable(callback):
            raise ConfigurationError(f"callback must be a function or coroutine function, not {callback!r}")
        if not isinstance(prefix, str):
            raise ConfigurationError(f"prefix is a string, not {prefix!r}")
        watch_id = f"w{next(self._ids)}"
        watch = Watch(watch_id, prefix, callback, from_revision or 0)
        self._watches[watch_id] = watch  # before the request: replayed changes may precede its answer
        params: dict[str, Any] = {"watch_id": watch_id, "prefix": prefix}
        if from_revision is not None:
            params["from_revision"] = from_revision
        try:
            head = await self._connection.call(
                Call("state.shared.watch", params, lambda r: int(r["revision"]))
            )
        except BaseException:
            self._watches.pop(watch_id, None)
            raise
        if from_revision is None:
            watch.last_revision = max(watch.last_revision, head)
        return watch

    async def unwatch(self, watch: Watch) -> None:
        """Stop ``watch``; its callback is not called again."""
        watch.active = False
        if self._watches.pop(watch.watch_id, None) is not None and not self._connection.closed:
            await self._connection.call(
                Call("state.shared.unwatch", {"watch_id": watch.watch_id}, lambda r: None)
            )

    def _on_changed(self, data: Any) -> None:
        try:
            watch = self._watches.get(data["watch_id"])
            change = StateChange.model_validate(data)
        except (TypeError, KeyError, ValidationError) as exc:
            logger.warning("ignoring a state.changed event the SDK cannot read: %s", exc)
            return
        if watch is not None:
            watch._deliver(change)


class AsyncState:
    """``agent.state``: ``session``, ``persistent`` and ``shared``."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.session = AsyncSessionState(connection)
        """This connection's memory."""
        self.persistent = AsyncPersistentState(connection)
        """This agent's durable, versioned state."""
        self.shared = AsyncSharedState(connection)
        """State shared by every agent, with optimistic locking and watches."""


# --- blocking flavour ---------------------------------------------------------------------------


class SessionState:
    """Blocking :class:`AsyncSessionState`."""

    def __init__(self, portal: Portal, state: AsyncSessionState) -> None:
        self._portal, self._state = portal, state

    def set(self, key: str, value: Any) -> int:
        return self._portal.run(self._state.set(key, value))

    def get(self, key: str) -> StateEntry:
        return self._portal.run(self._state.get(key))

    def list(self, prefix: str = "") -> builtins.list[str]:
        return self._portal.run(self._state.list(prefix))

    def delete(self, key: str) -> bool:
        return self._portal.run(self._state.delete(key))


class PersistentState:
    """Blocking :class:`AsyncPersistentState`."""

    def __init__(self, portal: Portal, state: AsyncPersistentState) -> None:
        self._portal, self._state = portal, state

    def set(self, key: str, value: Any) -> int:
        return self._portal.run(self._state.set(key, value))

    def get(self, key: str, version: int | None = None) -> StateEntry:
        return self._portal.run(self._state.get(key, version))

    def history(self, key: str, limit: int = 10) -> StateHistory:
        return self._portal.run(self._state.history(key, limit))

    def list(self, prefix: str = "") -> builtins.list[str]:
        return self._portal.run(self._state.list(prefix))


class SharedState:
    """Blocking :class:`AsyncSharedState`. Watch callbacks run on the SDK's own thread."""

    def __init__(self, portal: Portal, state: AsyncSharedState) -> None:
        self._portal, self._state = portal, state

    def get(self, key: str) -> StateEntry:
        return self._portal.run(self._state.get(key))

    def set(self, key: str, value: Any, expected_version: int | None = None) -> int:
        return self._portal.run(self._state.set(key, value, expected_version))

    def delete(self, key: str, expected_version: int | None = None) -> int:
        return self._portal.run(self._state.delete(key, expected_version))

    def watch(self, prefix: str = "", *, callback: WatchCallback, from_revision: int | None = None) -> Watch:
        return self._portal.run(self._state.watch(prefix, callback=callback, from_revision=from_revision))

    def unwatch(self, watch: Watch) -> None:
        self._portal.run(self._state.unwatch(watch))


class State:
    """Blocking ``agent.state``."""

    def __init__(self, portal: Portal, state: AsyncState) -> None:
        self.session = SessionState(portal, state.session)
        self.persistent = PersistentState(portal, state.persistent)
        self.shared = SharedState(portal, state.shared)
