"""Human approvals inside the running gateway.

* :class:`ApprovalBook` records the approval an invocation waits for, bound to the exact invocation
  (key, capability, canonical inputs): the pipeline's ``enforce`` stage asks it when the policy's
  decision is ``require_approval`` (core/pipeline.py).
* :class:`Approvals` answers ``approvals.check``, replays an approved invocation exactly once through
  the same pipeline (the step to ``running`` is committed before it starts; see ``store``), keeps its
  result, and pushes ``approval.resolved`` to every live session of the approval's key.

How the gateway learns of a decision made by ``kruxosctl`` (which writes SQLite directly): kruxosctl
commits the decision, then sends SIGUSR1 to the PID in ``state_dir/gateway.pid``; the gateway then
sweeps the database at once. The same sweep also runs every ``policy.approval_poll_interval`` seconds
(one indexed query), which applies expiries and catches a decision whose signal was lost (e.g.
kruxosctl ran while the gateway was restarting). So a signal gives an immediate reaction and the
sweep guarantees one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..core import ids
from ..core.methods import Method
from ..core.models import InvocationResult
from ..core.pipeline import PendingApproval, Pipeline
from ..core.sessions import Caller, Sessions
from ..errors import ApprovalNotFound, GatewayError, InternalError
from ..storage import store
from ..storage.db import Database
from . import store as approvals_store

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 2.0
APPROVAL_RESOLVED = "approval.resolved"


class ApprovalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    approval_id: str


class ApprovalBook:
    """Records pending approvals: one per exact invocation, found again if asked twice."""

    def __init__(self, db: Database, ttl: float) -> None:
        self.db = db
        self.ttl = ttl

    async def request(
        self, key_name: str, session_id: str, capability: str, inputs: dict[str, Any], rule: str
    ) -> PendingApproval:
        """The pending approval for this exact invocation (created if there is none)."""
        approval, _ = await self.db.run(
            functools.partial(
                approvals_store.find_or_create,
                approval_id="apr_" + secrets.token_hex(12),
                key_name=key_name,
                session_id=session_id,
                capability=capability,
                inputs=inputs,
                inputs_sha256=store.inputs_digest(inputs),
                rule=rule,
                ttl=self.ttl,
            )
        )
        return PendingApproval(approval.approval_id, approvals_store.iso(approval.expires_at) or "")


class Approvals:
    """Approvals of one gateway: requests, ``approvals.check``, exactly-once runs and pushed results."""

    def __init__(self, db: Database, pipeline: Pipeline, sessions: Sessions, drain_timeout: float) -> None:
        self.db = db
        self.pipeline = pipeline
        self.sessions = sessions
        self.drain_timeout = drain_timeout
        self._wake = asyncio.Event()
        # Set (and replaced by a fresh one) whenever approvals are resolved: what wait() sleeps on.
        self._resolved = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._once: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        """Mark runs a previous gateway left unfinished as interrupted, then start sweeping."""
        interrupted = await self.db.run(approvals_store.interrupt_running)
        for approval in interrupted:
            log.warning(
                "approval %s was running when the gateway stopped; marked interrupted", approval.approval_id
            )
        self._sweeper = asyncio.create_task(self._sweep_forever(poll_interval), name="kruxos-approvals")

    def wake(self) -> None:
        """Sweep now (SIGUSR1 from kruxosctl after a decision, or a resolution made here)."""
        if self._sweeper is not None:
            self._wake.set()
        elif self._once is None or self._once.done():  # not started (an embedded gateway): sweep once
            self._once = asyncio.get_running_loop().create_task(self.sweep())

    async def close(self) -> None:
        """Stop sweeping; let approved invocations that are running finish (they are recorded)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._running:
            # Like requests in flight on SIGTERM: up to drain_timeout, then cancelled. A cancelled run
            # stays "running" in the database and becomes "interrupted" at the next start.
            running = list(self._running.values())
            _, unfinished = await asyncio.wait(running, timeout=self.drain_timeout)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _sweep_forever(self, interval: float) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("approvals sweep failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()

    async def sweep(self) -> None:
        """Apply expiries, start approved invocations that have not run, push new resolutions."""

        def due(conn: Any) -> tuple[list[approvals_store.Approval], list[approvals_store.Approval]]:
            approvals_store.expire_due(conn)
            return approvals_store.approved_to_run(conn), approvals_store.take_unnotified(conn)

        approved, resolved = await self.db.run(due)
        for approval in approved:
            self._start_run(approval)
        for approval in resolved:
            self._push(approval)

    # --- agent side ---------------------------------------------------------------------------

    def methods(self) -> list[Method[Any]]:
        """What approvals add to the dispatch table."""
        return [Method("approvals.check", ApprovalParams, self.check)]

    async def wait(self, caller: Caller, approval_id: str, seconds: float) -> dict[str, Any]:
        """The approval once it is resolved (its result included), or as it stands after
        ``seconds``; another key's approval is ``not_found``, as for ``check``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        params = ApprovalParams(approval_id=approval_id)
        while True:
            approval: dict[str, Any] = (await self.check(caller, params))["approval"]
            remaining = deadline - loop.time()
            if approval["resolved"] or remaining <= 0:
                return approval
            # Woken by each resolution; at least once a second anyway (a decision made while the
            # gateway was down is found by the next check, not by a push).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resolved.wait(), min(remaining, 1.0))

    async def check(self, caller: Caller, params: ApprovalParams) -> dict[str, Any]:
        """``approvals.check``: the approval's status, if it belongs to the caller's key."""

        def read(conn: Any) -> tuple[approvals_store.Approval | None, bool]:
            expired = approvals_store.expire_due(conn)
            return approvals_store.get(conn, params.approval_id), bool(expired)

        approval, expired = await self.db.run(read)
        if expired:
            self.wake()
        if approval is None or approval.key_name != caller.key_name:
            raise ApprovalNotFound(
                f"no approval {params.approval_id!r} for this key",
                recovery=[("check_id", "use the approval_id of an ApprovalRequired raised for this key")],
                details={"approval_id": params.approval_id},
            )
        if approval.status == "approved":
            self._start_run(approval)  # e.g. decided while the gateway was down and not yet swept
        return {"approval": approval.to_wire()}

    # --- operator side ------------------------------------------------------------------------

    async def decide(
        self, approval_id: str, *, approve: bool, operator: str, reason: str
    ) -> approvals_store.Approval:
        """Approve or reject (the operator API used in-process; kruxosctl writes the same rows)."""
        approval = await self.db.run(
            functools.partial(
                approvals_store.decide,
                approval_id=approval_id,
                approve=approve,
                operator=operator,
                reason=reason,
            )
        )
        if approve:
            self._start_run(approval)
        else:
            self.wake()
        return approval

    # --- running an approved invocation ---------------------------------------------------------

    def _start_run(self, approval: approvals_store.Approval) -> None:
        if approval.approval_id in self._running:
            return
        task = asyncio.create_task(self._run(approval), name=f"kruxos-approval-{approval.approval_id}")
        self._running[approval.approval_id] = task
        task.add_done_callback(lambda _: self._running.pop(approval.approval_id, None))

    async def _run(self, approval: approvals_store.Approval) -> None:
        if not await self.db.run(functools.partial(approvals_store.claim, approval_id=approval.approval_id)):
            return  # already claimed: running elsewhere, finished, or interrupted
        started = time.monotonic()
        result = await self._replay(approval)
        result = {**result, "duration_ms": round((time.monotonic() - started) * 1000, 3)}
        await self.db.run(
            functools.partial(approvals_store.finish, approval_id=approval.approval_id, result=result)
        )
        outcome = "success" if result["success"] else (result.get("error") or {}).get("type")
        log.info("approval %s: ran %s (%s)", approval.approval_id, approval.capability, outcome)
        self.wake()

    async def _replay(self, approval: approvals_store.Approval) -> dict[str, Any]:
        """The approved invocation, through the pipeline (which audits it), as its stored result."""
        caller = Caller(approval.key_name, approval.session_id)
        invocation_id = ids.invocation_id()
        failure: GatewayError
        try:
            result = await self.pipeline.invoke(
                caller,
                approval.capability,
                approval.inputs,
                approval_id=approval.approval_id,
                invocation_id=invocation_id,
            )
            return result.model_dump(mode="json")
        except GatewayError as exc:
            failure = exc
        except Exception:
            log.exception("approved invocation %s failed inside the gateway", approval.approval_id)
            failure = InternalError("the gateway failed running the approved invocation")
        return InvocationResult(
            invocation_id=invocation_id,
            capability=approval.capability,
            success=False,
            data=None,
            error=failure.to_info(),
            duration_ms=0.0,
        ).model_dump(mode="json")

    # --- telling people -----------------------------------------------------------------------

    def _push(self, approval: approvals_store.Approval) -> None:
        data = approval.to_wire()
        for caller in self.sessions.of_key(approval.key_name):
            caller.events.push(APPROVAL_RESOLVED, data)
        resolved, self._resolved = self._resolved, asyncio.Event()
        resolved.set()
