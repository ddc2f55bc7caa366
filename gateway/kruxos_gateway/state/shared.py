"""Shared state: one key space for every agent, optimistic locking, and ordered watches.

:class:`SharedBackend` is the interface the rest of the gateway uses; :class:`SqliteShared` implements
it on the gateway's database. It is shaped after etcd's model (a global revision per change, a
per-key version, watches that resume from a revision, compaction that makes old revisions
unavailable), so an etcd implementation can replace it when agents span several appliances.

Ordering: every write is one job on the database thread (read, check ``expected_version``, write), so
writes are linearizable and revisions are assigned in commit order. Reads (``get``, ``replay``,
``value_at``) run on a reader thread (``db.Database.read``): they see every change committed before
they began, and never wait behind writes. Each committed change is handed to :class:`WatchHub`
through a reorder buffer that releases revisions strictly in sequence, so a watch sees every change
once, in revision order, whatever order the writers' coroutines resume in.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .queries import (
    Change,
    Conflict,
    Replay,
    load,
    shared_get,
    shared_head,
    shared_log_value,
    shared_replay,
    shared_write,
)
from .quotas import Usage

if TYPE_CHECKING:
    from ..storage.db import Database

log = logging.getLogger(__name__)

# Committed changes waiting for an earlier revision; normally a handful at most.
MAX_REORDER = 10_000


@dataclass(frozen=True)
class Current:
    """What a reader sees for a key: ``version`` 0 and ``found`` False when it is absent."""

    key: str
    found: bool
    value: Any
    version: int
    revision: int
    updated_at: str | None
    updated_by: str | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "found": self.found,
            "value": self.value,
            "version": self.version,
            "revision": self.revision,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


class SharedBackend(Protocol):
    """Where shared state lives (SQLite today; etcd's revisions and watches map onto this)."""

    async def get(self, key: str) -> Current: ...

    async def write(
        self, key: str, value_json: str | None, expected: int | None, by: str, *, undo: bool = False
    ) -> Change | Conflict:
        """Write (``value_json`` None: delete) if the key's version is ``expected`` (None: always).

        Charged to ``by``'s quotas, and refused past them (``QuotaExceeded``) unless it is the ``undo``
        of a rolled-back transaction, which puts back what was there and must not fail on a quota.
        """
        ...

    async def head(self) -> int:
        """The newest revision whose change has been handed to the listener."""
        ...

    async def replay(self, prefix: str, after: int, upto: int) -> Replay: ...

    async def value_at(self, key: str, version: int) -> tuple[bool, Any] | None:
        """(exists, value) of ``key`` at ``version``; None if that history is gone."""
        ...


class SqliteShared:
    """:class:`SharedBackend` on the gateway's SQLite database."""

    def __init__(
        self, db: Database, keep: int, listener: Callable[[Change], None], usage: Usage | None = None
    ) -> None:
        self._db = db
        self._keep = keep
        self._listener = listener
        self._usage = usage  # charges each write to its writer's shared quotas (state/quotas.py)
        self._head: int | None = None
        self._head_lock = asyncio.Lock()
        self._pending: dict[int, Change] = {}

    async def _ready(self) -> int:
        if self._head is None:
            async with self._head_lock:
                if self._head is None:
                    # No write is queued before this is known (write() waits for it), so what the
                    # reader sees is every revision there is.
                    self._head = await self._db.read(shared_head)
        return self._head

    async def head(self) -> int:
        return await self._ready()

    async def get(self, key: str) -> Current:
        row = await self._db.read(functools.partial(shared_get, key=key))
        if row is None or row["deleted"]:
            return Current(key, False, None, 0, int(row["revision"]) if row else 0, None, None)
        return Current(
            key,
            True,
            load(row["value"]),
            row["version"],
            row["revision"],
            row["updated_at"],
            row["updated_by"],
        )

    async def write(
        self, key: str, value_json: str | None, expected: int | None, by: str, *, undo: bool = False
    ) -> Change | Conflict:
        await self._ready()
        job = asyncio.ensure_future(
            self._db.run(
                functools.partial(
                    shared_write,
                    key=key,
                    value=value_json,
                    expected=expected,
                    by=by,
                    keep=self._keep,
                    usage=self._usage,
                    enforce=not undo,
                )
            )
        )
        # Published from a done-callback: it runs even if the writer is cancelled after the commit
        # (its connection dropped), so the hub never waits for a revision that will not come.
        job.add_done_callback(self._committed)
        return await asyncio.shield(job)

    def _committed(self, job: asyncio.Future[Change | Conflict]) -> None:
        if job.cancelled() or job.exception() is not None:
            return
        change = job.result()
        if isinstance(change, Conflict):
            return
        self._pending[change.revision] = change
        assert self._head is not None
        if len(self._pending) > MAX_REORDER:
            # A revision never arrived (it cannot happen with one writer thread; if it ever does,
            # stalling every watch would be worse than a gap that the log shows): skip past it.
            log.error("shared-state revision %d never arrived; watches skip it", self._head + 1)
            self._head = min(self._pending) - 1
        while (nxt := self._pending.pop(self._head + 1, None)) is not None:
            self._head = nxt.revision
            try:
                self._listener(nxt)
            except Exception:
                log.exception("a shared-state listener failed on revision %d", nxt.revision)

    async def replay(self, prefix: str, after: int, upto: int) -> Replay:
        return await self._db.read(functools.partial(shared_replay, prefix=prefix, after=after, upto=upto))

    async def value_at(self, key: str, version: int) -> tuple[bool, Any] | None:
        return await self._db.read(functools.partial(shared_log_value, key=key, version=version))


# --- watches ------------------------------------------------------------------------------------


class Sink(Protocol):
    def push(self, event: str, data: dict[str, Any]) -> None: ...


@dataclass(eq=False)
class Subscription:
    """One watch of one connection: changes under ``prefix`` after revision ``last``."""

    session_id: str
    watch_id: str
    prefix: str
    sink: Sink
    last: int
    catching_up: bool = True
    buffered: list[Change] = field(default_factory=list)

    def offer(self, change: Change) -> None:
        if not change.key.startswith(self.prefix) or change.revision <= self.last:
            return
        if self.catching_up:
            self.buffered.append(change)
            return
        self._send(change)

    def _send(self, change: Change) -> None:
        self.last = change.revision
        self.sink.push("state.changed", {"watch_id": self.watch_id, **change.to_wire()})

    def caught_up(self, replayed: list[Change]) -> None:
        """Send the replayed history, then what arrived meanwhile; from now on send live."""
        for change in replayed:
            if change.revision > self.last:
                self._send(change)
        for change in self.buffered:
            if change.revision > self.last:
                self._send(change)
        self.buffered.clear()
        self.catching_up = False


class WatchHub:
    """Every live watch, fed with each committed change in revision order."""

    def __init__(self) -> None:
        self._subs: dict[tuple[str, str], Subscription] = {}

    def publish(self, change: Change) -> None:
        for sub in list(self._subs.values()):
            sub.offer(change)

    def add(self, sub: Subscription) -> bool:
        """Register ``sub``; False if its connection already has a watch with that id."""
        ident = (sub.session_id, sub.watch_id)
        if ident in self._subs:
            return False
        self._subs[ident] = sub
        return True

    def remove(self, session_id: str, watch_id: str) -> bool:
        return self._subs.pop((session_id, watch_id), None) is not None

    def drop_session(self, session_id: str) -> None:
        for ident in [i for i in self._subs if i[0] == session_id]:
            del self._subs[ident]

    def count(self, session_id: str) -> int:
        return sum(1 for i in self._subs if i[0] == session_id)
