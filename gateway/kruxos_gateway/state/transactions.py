"""Transactions: invocations whose effects are all undone if one fails or the agent rolls back.

There is no isolation: each invocation takes effect at once, as outside a transaction, and other
agents may see it before the commit. What a transaction adds is *compensation*: before a
transactional capability runs, the gateway records what it will touch (a byte-for-byte snapshot of
each workspace path, the previous value of a state key); a rollback puts every recorded thing back,
newest first. A commit just forgets the records.

A capability is transactional if it is read-only (nothing to undo) or has a :data:`Compensator`
here; every other capability (``process.run``, ``network.http_request``, ``alerts.send``, …) is
refused inside a transaction with ``not_transactional``. :meth:`Transactions.register` is the
extension point for a capability that can declare how it is undone (the state service registers
its own; the filesystem's are :data:`FILESYSTEM_COMPENSATORS`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..capabilities.workspace import Workspace
from ..errors import GatewayError, NotTransactional, QuotaExceeded, TooManyRequests, UnknownTransaction
from . import snapshots

log = logging.getLogger(__name__)

#: An undo action: runs at rollback, returns notes about what it could not restore.
Undo = Callable[[], Awaitable[list[str]]]


@dataclass
class Prepared:
    """What a compensator captured before its capability ran; ``finish`` turns the result into undos."""

    undo: list[Undo] = field(default_factory=list)
    finish: Callable[[dict[str, Any]], list[Undo]] | None = None


@dataclass(frozen=True)
class TxContext:
    """What a compensator may use."""

    workspace: Workspace
    key_name: str
    session_id: str
    scratch: Path  # a fresh directory for this step's snapshots
    budget: snapshots.Budget  # bytes the transaction may still copy into snapshots


Compensator = Callable[[TxContext, dict[str, Any]], Awaitable[Prepared]]


# --- filesystem compensators --------------------------------------------------------------------


def _fs_compensator(paths: Callable[[Workspace, dict[str, Any]], list[str]]) -> Compensator:
    async def prepare(tx: TxContext, inputs: dict[str, Any]) -> Prepared:
        def snap_all() -> list[snapshots.Snapshot]:
            tx.scratch.mkdir(parents=True, exist_ok=True)
            taken = []
            for n, agent_path in enumerate(paths(tx.workspace, inputs)):
                taken.append(snapshots.take(tx.workspace, agent_path, tx.scratch / str(n), tx.budget))
            return taken

        try:
            taken = await asyncio.to_thread(snap_all)
        except (NotTransactional, QuotaExceeded):
            raise
        except GatewayError:
            return Prepared()  # the path is invalid: the capability itself will fail the same way

        async def undo() -> list[str]:
            def put_back() -> list[str]:
                notes = []
                for snap in reversed(taken):
                    note = snapshots.restore(tx.workspace, snap)
                    if note:
                        notes.append(note)
                return notes

            return await asyncio.to_thread(put_back)

        return Prepared([undo])

    return prepare


def _write_paths(ws: Workspace, inputs: dict[str, Any]) -> list[str]:
    return [snapshots.top_missing(ws, inputs["path"])]


def _delete_paths(ws: Workspace, inputs: dict[str, Any]) -> list[str]:
    return [inputs["path"]]


def _move_paths(ws: Workspace, inputs: dict[str, Any]) -> list[str]:
    return [inputs["src"], snapshots.top_missing(ws, inputs["dst"])]


#: How the filesystem capabilities are undone: a snapshot of every path each one may change.
FILESYSTEM_COMPENSATORS: Mapping[str, Compensator] = MappingProxyType(
    {
        "filesystem.write": _fs_compensator(_write_paths),
        "filesystem.mkdir": _fs_compensator(_write_paths),
        "filesystem.delete": _fs_compensator(_delete_paths),
        "filesystem.move": _fs_compensator(_move_paths),
    }
)


# --- transactions -------------------------------------------------------------------------------


@dataclass(eq=False)
class Transaction:
    id: str
    session_id: str
    scratch: Path
    #: Undo steps with the order in which they were recorded, across every transaction of the gateway.
    undo: list[tuple[int, Undo]] = field(default_factory=list)
    budget: snapshots.Budget = field(default_factory=lambda: snapshots.Budget(0))
    steps: int = 0
    status: str = "open"  # open, committed, rolled_back
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Transactions:
    """The open transactions of every connection."""

    MAX_OPEN_PER_SESSION = 16

    def __init__(self, root: Path, max_snapshot_bytes: int, key_snapshot_bytes: int | None = None) -> None:
        self.root = root
        self.max_snapshot_bytes = max_snapshot_bytes
        # quotas.transaction_snapshot_bytes: what the open transactions of one API key may hold in all.
        self.key_snapshot_bytes = key_snapshot_bytes
        self._key_budgets: dict[str, snapshots.KeyBudget] = {}
        self._open: dict[str, Transaction] = {}
        self._recorded = itertools.count()
        self._compensators: dict[str, Compensator] = dict(FILESYSTEM_COMPENSATORS)

    def remove_leftovers(self) -> None:
        """At start: snapshots left by a gateway that stopped mid-transaction cannot be applied any
        more. Not done on construction: building the parts (``kruxosctl policy test`` builds them to
        learn every capability) must not touch the daemon's state."""
        shutil.rmtree(self.root, ignore_errors=True)

    def register(self, capability: str, compensator: Compensator) -> None:
        """Declare how ``capability`` is undone, which makes it usable inside transactions."""
        self._compensators[capability] = compensator

    def compensator(self, capability: str) -> Compensator | None:
        return self._compensators.get(capability)

    def begin(self, session_id: str, key_name: str | None = None) -> Transaction:
        if sum(1 for t in self._open.values() if t.session_id == session_id) >= self.MAX_OPEN_PER_SESSION:
            raise TooManyRequests(
                f"this connection already has {self.MAX_OPEN_PER_SESSION} open transactions",
                recovery=[("finish_transactions", "commit or roll back a transaction first")],
            )
        tx_id = "tx_" + secrets.token_hex(12)
        key_budget = None
        if key_name is not None and self.key_snapshot_bytes is not None:
            key_budget = self._key_budgets.get(key_name)
            if key_budget is None:  # kept once made: the snapshot threads of its transactions hold it
                key_budget = snapshots.KeyBudget(key_name, self.key_snapshot_bytes)
                self._key_budgets[key_name] = key_budget
        tx = Transaction(
            tx_id,
            session_id,
            self.root / tx_id,
            budget=snapshots.Budget(self.max_snapshot_bytes, key_budget),
        )
        tx.scratch.mkdir(parents=True, exist_ok=True)
        self._open[tx_id] = tx
        return tx

    def get(self, session_id: str, tx_id: str) -> Transaction:
        tx = self._open.get(tx_id)
        if tx is None or tx.session_id != session_id:
            raise UnknownTransaction(tx_id)
        return tx

    def of_session(self, session_id: str) -> list[Transaction]:
        return [t for t in self._open.values() if t.session_id == session_id]

    async def commit(self, tx: Transaction) -> None:
        tx.status = "committed"
        self._forget(tx)

    def record(self, tx: Transaction, undo: list[Undo]) -> None:
        """Add undo steps to ``tx``, numbered so that rollbacks run them newest first."""
        tx.undo.extend((next(self._recorded), step) for step in undo)

    async def rollback(self, tx: Transaction) -> list[str]:
        """Apply every undo, newest first; return what could not be restored."""
        return await self._roll_back([tx])

    async def rollback_session(self, session_id: str) -> list[str]:
        """Roll back every open transaction of a connection that ended.

        Their steps may interleave (two transactions moving one file in turn), so the undo steps of
        all of them run in one sequence, newest first, as if it had been one transaction.
        """
        return await self._roll_back(self.of_session(session_id))

    async def _roll_back(self, txs: list[Transaction]) -> list[str]:
        steps = sorted((step for tx in txs for step in tx.undo), key=lambda step: step[0], reverse=True)
        notes: list[str] = []
        for _, undo in steps:
            try:
                notes.extend(await undo())
            except Exception as exc:
                log.exception("an undo step of transaction(s) %s failed", ", ".join(tx.id for tx in txs))
                notes.append(f"an undo step failed: {exc}")
        for tx in txs:
            tx.undo.clear()
            tx.status = "rolled_back"
            self._forget(tx)
        if notes:
            log.warning(
                "transaction(s) %s rolled back with %d problem(s): %s",
                ", ".join(tx.id for tx in txs),
                len(notes),
                notes,
            )
        return notes

    def _forget(self, tx: Transaction) -> None:
        self._open.pop(tx.id, None)
        shutil.rmtree(tx.scratch, ignore_errors=True)
        if tx.budget.key is not None:  # its snapshots are gone: its key may take that room again
            tx.budget.key.release(tx.budget)
