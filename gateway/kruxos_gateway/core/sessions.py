"""Who is connected: the live sessions, and what runs when one ends.

A transport opens a session once a connection is authenticated and greeted, and closes it when the
connection ends. Features find the sessions of a key here to push events to them (approval results,
state watches), and register what must happen when a session ends (drop its session state, roll back
its open transactions) with :meth:`Sessions.on_closed` — in the composition root, not by reaching into
each other.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Pushes server events to one connection, in the order they are pushed (never blocks)."""

    def push(self, event: str, data: dict[str, Any]) -> None: ...


class _Nowhere:
    """The sink of a caller with no connection (an approved replay, a test of the core alone)."""

    def push(self, event: str, data: dict[str, Any]) -> None:
        return None


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the API key's name, the connection's session, and a way to reach it."""

    key_name: str
    session_id: str
    events: EventSink = field(default_factory=_Nowhere, compare=False, repr=False)


SessionHook = Callable[[Caller], Awaitable[None]]


class Sessions:
    """The live sessions of one gateway, by id."""

    def __init__(self) -> None:
        self._live: dict[str, Caller] = {}
        self._on_closed: list[SessionHook] = []

    def on_closed(self, hook: SessionHook) -> None:
        """Run ``hook(caller)`` whenever a session ends, in the order the hooks were added."""
        self._on_closed.append(hook)

    def opened(self, caller: Caller) -> None:
        self._live[caller.session_id] = caller

    async def closed(self, caller: Caller) -> None:
        """Forget the session, then run every hook; one that fails is logged and the rest still run."""
        self._live.pop(caller.session_id, None)
        for hook in self._on_closed:
            try:
                await hook(caller)
            except Exception:
                log.exception("a session-closed hook failed for session %s", caller.session_id)

    def of_key(self, key_name: str) -> list[Caller]:
        """The live sessions authenticated with the key named ``key_name``."""
        return [c for c in self._live.values() if c.key_name == key_name]

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._live

    def __len__(self) -> int:
        return len(self._live)
