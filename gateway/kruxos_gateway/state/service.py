"""The state service: state capabilities, the watch and transaction methods, and their hooks.

One :class:`StateService` is built by the composition root (``compose.py``), which takes from it:

- :meth:`~StateService.capabilities`: ``state.session.*``, ``state.persistent.*``, ``state.shared.*``
  and ``state.briefing.generate``, invoked like any other capability, so every state operation is
  validated, policy-checked and audited on the same path as a file write;
- :meth:`~StateService.methods`: ``state.shared.watch``/``unwatch`` and ``transaction.*`` for the
  dispatch table; a transaction's steps run through the pipeline with a ``prepare`` stage that takes
  their snapshots after the policy's decision;
- :meth:`~StateService.session_closed`, a hook that drops the session's state and watches, rolls back
  its open transactions and records when the session ended (for briefings);
- :meth:`~StateService.record_file_change`, an observer of the pipeline that records which paths the
  filesystem capabilities changed (for briefings; the audit log keeps only input digests).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..capabilities.base import Capability, Context, Registry, define
from ..capabilities.inputs import Inputs, NoInputs
from ..capabilities.workspace import Workspace
from ..config import GatewayConfig
from ..core.methods import Method
from ..core.models import InvocationResult
from ..core.pipeline import Pipeline
from ..core.sessions import Caller
from ..errors import (
    GatewayError,
    HistoryTrimmed,
    InvalidInput,
    NotTransactional,
    TooManyRequests,
    VersionConflict,
)
from ..storage.db import Database
from . import briefing, queries
from .limits import check_key, check_prefix, encode_value
from .queries import Change, Conflict
from .quotas import Usage
from .session import SessionStore
from .shared import SharedBackend, SqliteShared, Subscription, WatchHub
from .transactions import Prepared, Transactions, TxContext, Undo

log = logging.getLogger(__name__)

MAX_WATCHES_PER_SESSION = 64
FILE_CAPABILITIES = ("filesystem.write", "filesystem.delete", "filesystem.mkdir", "filesystem.move")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class WatchParams(_Params):
    watch_id: str = Field(min_length=1, max_length=256)
    prefix: str = ""
    from_revision: int | None = Field(default=None, ge=0)


class UnwatchParams(_Params):
    watch_id: str


class TransactionParams(_Params):
    transaction_id: str


class TransactionInvokeParams(_Params):
    transaction_id: str
    name: str
    inputs: dict[str, Any] = {}


class BeginParams(_Params):
    pass


class TransactionStepResult(InvocationResult):
    """``transaction.invoke``'s answer: the invocation's result and the transaction's state after it."""

    transaction: dict[str, Any]


class StateService:
    """Agent state for one gateway."""

    def __init__(self, config: GatewayConfig, db: Database, workspace: Workspace) -> None:
        self.config = config.state
        self.db = db
        self.workspace = workspace
        quotas = config.quotas
        self.sessions = SessionStore(self.config, quotas)
        self.hub = WatchHub()
        # What each key holds in persistent and shared state, kept by the write jobs (state/quotas.py).
        self.usage = Usage(quotas)
        db.on_rollback(self.usage.clear)
        self.shared: SharedBackend = SqliteShared(
            db, self.config.shared_history, self.hub.publish, self.usage
        )
        self.transactions = Transactions(
            config.state_dir / "transactions",
            self.config.max_transaction_snapshot_bytes,
            quotas.transaction_snapshot_bytes,
        )
        self._register_compensators()

    def start(self) -> None:
        """Before serving: drop what a gateway that stopped mid-transaction left."""
        self.transactions.remove_leftovers()

    def methods(self, pipeline: Pipeline, registry: Registry) -> list[Method[Any]]:
        """What state adds to the dispatch table; transaction steps run through ``pipeline``."""

        async def transaction_invoke(
            caller: Caller, params: TransactionInvokeParams
        ) -> TransactionStepResult:
            return await self.transaction_invoke(pipeline, registry, caller, params)

        return [
            Method("state.shared.watch", WatchParams, self.watch),
            Method("state.shared.unwatch", UnwatchParams, self.unwatch),
            Method("transaction.begin", BeginParams, self.begin),
            Method("transaction.invoke", TransactionInvokeParams, transaction_invoke),
            Method("transaction.commit", TransactionParams, self.commit),
            Method("transaction.rollback", TransactionParams, self.rollback),
        ]

    # --- session lifecycle ----------------------------------------------------------------------

    async def session_closed(self, caller: Caller) -> None:
        self.hub.drop_session(caller.session_id)
        open_txs = self.transactions.of_session(caller.session_id)
        if open_txs:
            log.info(
                "session %s ended inside transaction(s) %s: rolling back",
                caller.session_id,
                ", ".join(tx.id for tx in open_txs),
            )
            await self.transactions.rollback_session(caller.session_id)
        self.sessions.drop(caller.session_id)
        await self.db.run(
            functools.partial(queries.record_session_end, session_id=caller.session_id, owner=caller.key_name)
        )

    # --- watches --------------------------------------------------------------------------------

    async def watch(self, caller: Caller, p: WatchParams) -> dict[str, Any]:
        check_prefix(p.prefix, self.config)
        if self.hub.count(caller.session_id) >= MAX_WATCHES_PER_SESSION:
            raise TooManyRequests(
                f"this connection already has {MAX_WATCHES_PER_SESSION} watches",
                recovery=[("unwatch", "cancel a watch you no longer need, or watch a broader prefix")],
            )
        head = await self.shared.head()
        start = head if p.from_revision is None else p.from_revision
        if start > head:
            raise InvalidInput(
                "from_revision",
                f"revision {start} is in the future: the newest revision is {head}",
                "pass the revision of the last change you received, or omit it to watch from now",
            )
        sub = Subscription(caller.session_id, p.watch_id, p.prefix, caller.events, last=start)
        if not self.hub.add(sub):
            raise InvalidInput(
                "watch_id",
                f"this connection already has a watch {p.watch_id!r}",
                "choose a watch_id not in use on this connection",
            )
        try:
            replay = await self.shared.replay(p.prefix, start, head)
        except BaseException:
            self.hub.remove(caller.session_id, p.watch_id)
            raise
        if replay.trimmed:
            self.hub.remove(caller.session_id, p.watch_id)
            raise HistoryTrimmed(
                f"the changes after revision {start} are no longer kept (the oldest kept is "
                f"{replay.oldest}); this watch cannot resume without a gap",
                recovery=[
                    (
                        "reread_and_watch",
                        "read the keys you need with get, then watch again without from_revision",
                    ),
                ],
                details={"from_revision": start, "oldest_revision": replay.oldest},
            )
        sub.caught_up(replay.changes)
        self.db.submit(functools.partial(queries.record_watch, owner=caller.key_name, prefix=p.prefix))
        return {"watch_id": p.watch_id, "prefix": p.prefix, "revision": head}

    async def unwatch(self, caller: Caller, p: UnwatchParams) -> dict[str, Any]:
        return {"watch_id": p.watch_id, "removed": self.hub.remove(caller.session_id, p.watch_id)}

    # --- transactions ---------------------------------------------------------------------------

    async def begin(self, caller: Caller, params: BeginParams) -> dict[str, Any]:
        tx = self.transactions.begin(caller.session_id, caller.key_name)
        return {"transaction_id": tx.id, "status": tx.status}

    async def transaction_invoke(
        self, pipeline: Pipeline, registry: Registry, caller: Caller, p: TransactionInvokeParams
    ) -> TransactionStepResult:
        tx = self.transactions.get(caller.session_id, p.transaction_id)
        async with tx.lock:
            tx = self.transactions.get(caller.session_id, p.transaction_id)  # still open?
            try:
                capability = registry.get(p.name)
                compensate = self.transactions.compensator(p.name)
                if compensate is None and capability.definition.permission_tier != "read":
                    # Refused before the policy is asked: no approval is created for a step that
                    # could never run here.
                    raise NotTransactional(
                        f"{p.name} cannot be undone, so it cannot run inside a transaction",
                        recovery=[
                            ("run_outside_transaction", f"invoke {p.name} before or after the transaction"),
                        ],
                        details={"capability": p.name},
                    )
                prepared = Prepared()

                async def snapshot(ctx: Context, step: Capability, inputs: dict[str, Any]) -> None:
                    # The pipeline's prepare stage: after the decision, with the validated inputs.
                    nonlocal prepared
                    scratch = tx.scratch / str(tx.steps)
                    tx.steps += 1
                    if compensate is None:
                        return
                    prepared = await compensate(
                        TxContext(self.workspace, caller.key_name, caller.session_id, scratch, tx.budget),
                        inputs,
                    )
                    # Recorded before the handler runs: a partial effect is undone too.
                    self.transactions.record(tx, prepared.undo)

                result = await pipeline.invoke(caller, p.name, p.inputs, prepare=snapshot)
            except GatewayError:
                await self.transactions.rollback(tx)
                raise
            if result.success:
                if prepared.finish is not None:
                    assert result.data is not None
                    self.transactions.record(tx, prepared.finish(result.data))
                problems: list[str] = []
            else:
                problems = await self.transactions.rollback(tx)
            return TransactionStepResult(
                **dict(result),
                transaction={"transaction_id": tx.id, "status": tx.status, "problems": problems},
            )

    async def commit(self, caller: Caller, p: TransactionParams) -> dict[str, Any]:
        tx = self.transactions.get(caller.session_id, p.transaction_id)
        async with tx.lock:
            tx = self.transactions.get(caller.session_id, p.transaction_id)
            await self.transactions.commit(tx)
        return {"transaction_id": tx.id, "status": tx.status, "steps": tx.steps}

    async def rollback(self, caller: Caller, p: TransactionParams) -> dict[str, Any]:
        tx = self.transactions.get(caller.session_id, p.transaction_id)
        async with tx.lock:
            tx = self.transactions.get(caller.session_id, p.transaction_id)
            problems = await self.transactions.rollback(tx)
        return {"transaction_id": tx.id, "status": tx.status, "problems": problems}

    def _register_compensators(self) -> None:
        sessions = self.sessions

        async def session_write(tx: TxContext, inputs: dict[str, Any]) -> Prepared:
            old = sessions.get(tx.session_id, inputs["key"])

            async def undo() -> list[str]:
                sessions.restore(tx.session_id, inputs["key"], old)
                return []

            return Prepared([undo])

        async def persistent_set(tx: TxContext, inputs: dict[str, Any]) -> Prepared:
            def finish(data: dict[str, Any]) -> list[Undo]:
                async def undo() -> list[str]:
                    await self.db.run(
                        functools.partial(
                            queries.persistent_revert,
                            owner=tx.key_name,
                            key=data["key"],
                            version=data["version"],
                            usage=self.usage,
                        )
                    )
                    return []

                return [undo]

            return Prepared(finish=finish)

        async def shared_write(tx: TxContext, inputs: dict[str, Any]) -> Prepared:
            def finish(data: dict[str, Any]) -> list[Undo]:
                return [functools.partial(self._undo_shared, data["key"], int(data["version"]), tx.key_name)]

            return Prepared(finish=finish)

        self.transactions.register("state.session.set", session_write)
        self.transactions.register("state.session.delete", session_write)
        self.transactions.register("state.persistent.set", persistent_set)
        self.transactions.register("state.shared.set", shared_write)
        self.transactions.register("state.shared.delete", shared_write)

    async def _undo_shared(self, key: str, version: int, by: str) -> list[str]:
        """Put back the value ``key`` had before ``version``, unless someone wrote after it."""
        before = await self.shared.value_at(key, version - 1)
        if before is None:
            return [f"shared key {key!r}: its previous value is no longer kept; left at version {version}"]
        existed, value = before
        outcome = await self.shared.write(
            key, queries.dump(value) if existed else None, version, by, undo=True
        )
        if isinstance(outcome, Conflict):
            return [
                f"shared key {key!r}: changed by someone else since (now version {outcome.current}); "
                "not reverted"
            ]
        return []

    # --- briefings' file records ----------------------------------------------------------------

    def record_file_change(self, ctx: Context, name: str, data: dict[str, Any]) -> None:
        """The pipeline's observer: which paths a successful filesystem write, delete, mkdir or
        move changed, recorded for the briefing of the key's next session."""
        if name not in FILE_CAPABILITIES:
            return
        paths = [data[k] for k in ("path", "src", "dst") if isinstance(data.get(k), str)]
        self.db.submit(
            functools.partial(
                queries.record_file_event,
                owner=ctx.key_name,
                session_id=ctx.session_id,
                capability=name,
                paths=paths,
            )
        )

    # --- capabilities ---------------------------------------------------------------------------

    def capabilities(self) -> list[Capability]:
        return [
            _cap(
                "session.set",
                ["write"],
                "Store a value in this session's memory (gone when the connection ends).",
                "For scratch data of the current task that nobody else and no later session needs.",
                KeyValueInputs,
                _ENTRY_OUT,
                "write",
                self._session_set,
            ),
            _cap(
                "session.get",
                ["safe", "read-only"],
                "Read a value from this session's memory.",
                "To read back what this session stored; a missing key gives found=false.",
                KeyInputs,
                _ENTRY_OUT,
                "read",
                self._session_get,
            ),
            _cap(
                "session.list",
                ["safe", "read-only"],
                "List the keys in this session's memory.",
                "To see what this session stored, optionally under a prefix.",
                PrefixInputs,
                [("keys", "array", "The keys, sorted.")],
                "read",
                self._session_list,
            ),
            _cap(
                "session.delete",
                ["write"],
                "Delete a key from this session's memory.",
                "When a session value is no longer needed.",
                KeyInputs,
                [("key", "string", "The key."), ("deleted", "boolean", "False if it did not exist.")],
                "write",
                self._session_delete,
            ),
            _cap(
                "persistent.set",
                ["write"],
                "Store a value for this agent (API key) that survives restarts; each write is a new version.",
                "For checkpoints and settings this agent needs in later sessions.",
                KeyValueInputs,
                _ENTRY_OUT,
                "write",
                self._persistent_set,
            ),
            _cap(
                "persistent.get",
                ["safe", "read-only"],
                "Read this agent's persistent value (or an older version).",
                "To resume from a checkpoint or read a setting; a missing key gives found=false.",
                PersistentGetInputs,
                _ENTRY_OUT,
                "read",
                self._persistent_get,
            ),
            _cap(
                "persistent.history",
                ["safe", "read-only"],
                "List the kept versions of a persistent key, newest first.",
                "To see how a value changed, or find a version to go back to.",
                HistoryInputs,
                [
                    ("key", "string", "The key."),
                    ("versions", "array", "Entries (key, value, version, updated_at), newest first."),
                ],
                "read",
                self._persistent_history,
            ),
            _cap(
                "persistent.list",
                ["safe", "read-only"],
                "List this agent's persistent keys.",
                "To see which persistent keys exist, optionally under a prefix.",
                PrefixInputs,
                [("keys", "array", "The keys, sorted.")],
                "read",
                self._persistent_list,
            ),
            _cap(
                "shared.get",
                ["safe", "read-only"],
                "Read a shared value (visible to every agent) with its version.",
                "Before a conditional write: pass the version you read as expected_version.",
                KeyInputs,
                _SHARED_OUT,
                "read",
                self._shared_get,
            ),
            _cap(
                "shared.set",
                ["write"],
                "Write a shared value; with expected_version, only if nobody wrote since.",
                "To coordinate with other agents: read, compute, write with expected_version; "
                "on version_conflict, read again and retry.",
                SharedSetInputs,
                _SHARED_OUT,
                "write",
                self._shared_set,
            ),
            _cap(
                "shared.delete",
                ["write", "destructive"],
                "Delete a shared key; with expected_version, only if nobody wrote since.",
                "When a shared key is no longer needed.",
                SharedDeleteInputs,
                _SHARED_OUT,
                "write",
                self._shared_delete,
            ),
            _cap(
                "briefing.generate",
                ["safe", "read-only"],
                "Summarise what changed since this agent's (API key's) last session ended.",
                "At the start of a session: what changed in state, files, approvals and alerts.",
                NoInputs,
                [("briefing", "object", "summary (text), since, and structured details.")],
                "read",
                self._briefing,
            ),
        ]

    async def _session_set(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        key = inputs["key"]
        check_key(key, self.config)
        entry = self.sessions.set(ctx.session_id, key, encode_value(key, inputs["value"], self.config))
        return _entry(key, True, entry.value, entry.version, entry.updated_at)

    async def _session_get(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        key = inputs["key"]
        check_key(key, self.config)
        entry = self.sessions.get(ctx.session_id, key)
        if entry is None:
            return _entry(key, False, None, 0, None)
        return _entry(key, True, entry.value, entry.version, entry.updated_at)

    async def _session_list(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        check_prefix(inputs["prefix"], self.config)
        return {"keys": self.sessions.keys(ctx.session_id, inputs["prefix"])}

    async def _session_delete(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        check_key(inputs["key"], self.config)
        return {"key": inputs["key"], "deleted": self.sessions.delete(ctx.session_id, inputs["key"])}

    async def _persistent_set(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        key = inputs["key"]
        check_key(key, self.config)
        text = encode_value(key, inputs["value"], self.config)
        version = await self.db.run(
            functools.partial(
                queries.persistent_set,
                owner=ctx.key_name,
                key=key,
                value=text,
                session_id=ctx.session_id,
                keep=self.config.persistent_history,
                usage=self.usage,
            )
        )
        return version.to_wire()

    async def _persistent_get(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        key, wanted = inputs["key"], inputs["version"]
        check_key(key, self.config)
        if wanted is not None and wanted < 1:
            raise InvalidInput("version", "versions start at 1", "pass a version of at least 1, or omit it")
        # Reads go to a reader (db.Database.read): they never wait behind other keys' writes, and see
        # every write acknowledged before them.
        found = await self.db.read(
            functools.partial(queries.persistent_get, owner=ctx.key_name, key=key, version=wanted)
        )
        if found is None:
            return _entry(key, False, None, wanted or 0, None)
        return found.to_wire()

    async def _persistent_history(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        key, limit = inputs["key"], inputs["limit"]
        check_key(key, self.config)
        if limit < 1:
            raise InvalidInput("limit", "limit must be at least 1", "pass a limit of 1 or more")
        versions = await self.db.read(
            functools.partial(queries.persistent_history, owner=ctx.key_name, key=key, limit=limit)
        )
        return {"key": key, "versions": [v.to_wire() for v in versions]}

    async def _persistent_list(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        check_prefix(inputs["prefix"], self.config)
        rows = await self.db.read(
            functools.partial(queries.persistent_list, owner=ctx.key_name, prefix=inputs["prefix"])
        )
        return {"keys": [r.key for r in rows]}

    async def _shared_get(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        check_key(inputs["key"], self.config)
        return (await self.shared.get(inputs["key"])).to_wire()

    async def _shared_set(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        key = inputs["key"]
        check_key(key, self.config)
        text = encode_value(key, inputs["value"], self.config)
        return await self._shared_write(ctx, key, text, inputs["expected_version"])

    async def _shared_delete(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        check_key(inputs["key"], self.config)
        return await self._shared_write(ctx, inputs["key"], None, inputs["expected_version"])

    async def _shared_write(
        self, ctx: Context, key: str, text: str | None, expected: int | None
    ) -> dict[str, Any]:
        if expected is not None and expected < 0:
            raise InvalidInput(
                "expected_version",
                "expected_version cannot be negative",
                "pass 0 (absent) or a version you read",
            )
        outcome = await self.shared.write(key, text, expected, ctx.key_name)
        if isinstance(outcome, Conflict):
            now = "absent" if outcome.current == 0 else f"at version {outcome.current}"
            raise VersionConflict(
                f"shared key {key!r} is {now}, not at the expected version {outcome.expected}",
                recovery=[("reread_and_retry", "get the key again, recompute from its value, and retry")],
                details={
                    "key": key,
                    "expected_version": outcome.expected,
                    "current_version": outcome.current,
                },
            )
        return _shared_wire(outcome)

    async def _briefing(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        # On the writer, not a reader: a briefing is built from records submitted without waiting
        # (file events, watched prefixes), which only a job queued after them is sure to see.
        report = await self.db.run(
            functools.partial(briefing.build, owner=ctx.key_name, session_id=ctx.session_id)
        )
        return {"briefing": report}


def _entry(key: str, found: bool, value: Any, version: int, updated_at: str | None) -> dict[str, Any]:
    return {"key": key, "found": found, "value": value, "version": version, "updated_at": updated_at}


def _shared_wire(change: Change) -> dict[str, Any]:
    wire = change.to_wire()
    wire["found"] = not change.deleted
    return wire


_KEY = "The key, e.g. task.current (at most 256 characters)."
_EXPECTED = "Write only if the key is at this version (0: only if absent); omit to always write."


class KeyInputs(Inputs):
    key: str = Field(description=_KEY)


class KeyValueInputs(KeyInputs):
    value: Any = Field(description="Any JSON value except null.")


class PrefixInputs(Inputs):
    prefix: str = Field("", description="Only keys starting with this (default: all).")


class PersistentGetInputs(KeyInputs):
    version: int | None = Field(None, description="A version to read (default: the newest).")


class HistoryInputs(KeyInputs):
    limit: int = Field(10, description="How many versions (default 10).")


class SharedSetInputs(KeyValueInputs):
    expected_version: int | None = Field(None, description=_EXPECTED)


class SharedDeleteInputs(KeyInputs):
    expected_version: int | None = Field(None, description=_EXPECTED)


_ENTRY_OUT = [
    ("key", "string", "The key."),
    ("found", "boolean", "False if the key (or version) does not exist."),
    ("value", "any", "The value (null if not found)."),
    ("version", "integer", "The value's version (0 if not found)."),
    ("updated_at", "string", "When this version was written, ISO 8601 UTC."),
]
_SHARED_OUT = [
    *_ENTRY_OUT,
    ("revision", "integer", "The global revision of the key's last change (watches resume from revisions)."),
    ("updated_by", "string", "The name of the API key that wrote it."),
]


def _cap(
    name: str,
    tags: list[str],
    purpose: str,
    when_to_use: str,
    inputs: type[Inputs],
    outputs: list[tuple[str, str, str]],
    tier: str,
    handler: Callable[[Context, dict[str, Any]], Awaitable[dict[str, Any]]],
) -> Capability:
    definition = define("state", name, tags, purpose, when_to_use, inputs, outputs, tier)
    return Capability(definition, handler, inputs)
