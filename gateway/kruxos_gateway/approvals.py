"""Policy enforcement and human approvals inside the running gateway.

* :class:`PolicyGate` is the gateway's ``PolicyHook``: it asks the current :class:`~.policy.Policy`
  and raises ``PolicyDenied`` (with the rule's name) or, for ``require_approval``, records an approval
  bound to the exact invocation (key, capability, canonical inputs) and raises ``ApprovalRequired``.
  ``reload()`` swaps the policy atomically (SIGHUP, ``kruxosctl policy reload``); a broken file is
  refused and the previous policy stays in force.
* :class:`Approvals` answers ``approvals.check``, runs an approved invocation exactly once (the step
  to ``running`` is committed before it starts; see ``approvals_store``), keeps its result, and pushes
  ``approval.resolved`` to every live session of the approval's key.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from . import approvals_store, ids, store
from .capabilities import Context, validate_inputs
from .errors import ApprovalRequired, CapabilityFailed, GatewayError, PolicyDenied
from .models import CapabilityDefinition, InvocationResult
from .policy import Policy, PolicyError, load_policy

if TYPE_CHECKING:
    from .app import Caller, Gateway
    from .workspace import Workspace

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 2.0
APPROVAL_RESOLVED = "approval.resolved"


class ApprovalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    approval_id: str


class ApprovalNotFound(GatewayError):
    """No approval with that id belongs to the caller's key (another key's approval looks the same)."""

    error_type = "not_found"


class PolicyGate:
    """The gateway's policy hook: the current policy, and the approvals it creates."""

    def __init__(
        self,
        policy: Policy,
        approvals: Approvals,
        path: Path | None = None,
        workspace: Workspace | None = None,
    ) -> None:
        self.policy = policy
        self.approvals = approvals
        self.path = path
        self.workspace = workspace  # path rules also see where symlinks lead (policy.py, *Paths*)

    def reload(self) -> Policy:
        """Load the policy file again; on error raise ``PolicyError`` and keep the current policy.

        Never the shipped default: a file deleted by mistake must not replace the operator's rules.
        """
        if self.path is None:
            raise PolicyError("<policy>", None, "this gateway has no policy file to reload")
        self.policy = load_policy(self.path, workspace=self.workspace)
        log.info(
            "policy reloaded from %s: %d rule(s), default %s",
            self.path,
            len(self.policy.rules),
            self.policy.default,
        )
        return self.policy

    def reload_logged(self) -> None:
        """SIGHUP: reload, and log (not raise) a refusal."""
        try:
            self.reload()
        except PolicyError as exc:
            log.error("policy reload refused, the previous policy stays in force: %s", exc.one_line())

    async def evaluate(self, ctx: Context, capability: CapabilityDefinition, inputs: dict[str, Any]) -> None:
        decision = self.policy.decide(ctx.key_name, capability, inputs)
        if decision.decision == "allow":
            return
        if decision.decision == "deny":
            why = f": {decision.why}" if decision.why else ""
            raise PolicyDenied(
                f"policy rule {decision.rule!r} denies {capability.name}{why}",
                decision.rule,
                recovery=[("ask_operator", "do something else, or ask the operator to change the policy")],
            )
        approval, _ = await self.approvals.request(ctx, capability, inputs, decision.rule)
        raise ApprovalRequired(
            f"{capability.name} needs a person's approval (rule {decision.rule!r}"
            f"{': ' + decision.why if decision.why else ''}); "
            f"approval {approval.approval_id} is pending",
            approval.approval_id,
            recovery=[
                (
                    "wait_for_approval",
                    f"wait for approval {approval.approval_id} (approvals.wait), then read its result",
                ),
            ],
            details={"rule": decision.rule, "expires_at": approvals_store.iso(approval.expires_at)},
        )


class Approvals:
    """Approvals of one gateway: requests, ``approvals.check``, exactly-once runs and pushed results."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.ttl = gateway.config.policy.approval_timeout
        self._wake = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._once: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, poll_interval: float = DEFAULT_POLL_INTERVAL) -> None:
        """Mark runs a previous gateway left unfinished as interrupted, then start sweeping."""
        interrupted = await self.gateway.db.run(approvals_store.interrupt_running)
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
            _, unfinished = await asyncio.wait(running, timeout=self.gateway.config.limits.drain_timeout)
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

        approved, resolved = await self.gateway.db.run(due)
        for approval in approved:
            self._start_run(approval)
        for approval in resolved:
            self._push(approval)

    # --- agent side ---------------------------------------------------------------------------

    async def request(
        self, ctx: Context, capability: CapabilityDefinition, inputs: dict[str, Any], rule: str
    ) -> tuple[approvals_store.Approval, bool]:
        """The pending approval for this exact invocation (created if there is none)."""
        return await self.gateway.db.run(
            functools.partial(
                approvals_store.find_or_create,
                approval_id="apr_" + secrets.token_hex(12),
                key_name=ctx.key_name,
                session_id=ctx.session_id,
                capability=capability.name,
                inputs=inputs,
                inputs_sha256=store.inputs_digest(inputs),
                rule=rule,
                ttl=self.ttl,
            )
        )

    async def check(self, caller: Caller, params: ApprovalParams) -> dict[str, Any]:
        """``approvals.check``: the approval's status, if it belongs to the caller's key."""

        def read(conn: Any) -> tuple[approvals_store.Approval | None, bool]:
            expired = approvals_store.expire_due(conn)
            return approvals_store.get(conn, params.approval_id), bool(expired)

        approval, expired = await self.gateway.db.run(read)
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
        approval = await self.gateway.db.run(
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
        db = self.gateway.db
        if not await db.run(functools.partial(approvals_store.claim, approval_id=approval.approval_id)):
            return  # already claimed: running elsewhere, finished, or interrupted
        invocation_id = ids.invocation_id()
        started = time.monotonic()
        result = await self._invoke(approval, invocation_id)
        result = {**result, "duration_ms": round((time.monotonic() - started) * 1000, 3)}
        await db.run(
            functools.partial(approvals_store.finish, approval_id=approval.approval_id, result=result)
        )
        outcome = (
            "success" if result["success"] else (result.get("error") or {}).get("type", "execution_failed")
        )
        db.submit(
            functools.partial(
                store.append_audit,
                record=store.AuditRecord(
                    ts=store.now(),
                    key_name=approval.key_name,
                    session_id=approval.session_id,
                    invocation_id=invocation_id,
                    capability=approval.capability,
                    inputs_sha256=approval.inputs_sha256,
                    outcome=outcome,
                    duration_ms=result["duration_ms"],
                ),
            )
        )
        log.info("approval %s: ran %s (%s)", approval.approval_id, approval.capability, outcome)
        self.wake()

    async def _invoke(self, approval: approvals_store.Approval, invocation_id: str) -> dict[str, Any]:
        gateway = self.gateway
        failure: GatewayError
        try:
            capability = gateway.registry.get(approval.capability)
            inputs = validate_inputs(capability.definition, approval.inputs)
            gate = gateway.policy
            if isinstance(gate, PolicyGate):  # a deny added since the approval still wins
                decision = gate.policy.decide(approval.key_name, capability.definition, inputs)
                if decision.decision == "deny":
                    raise PolicyDenied(
                        f"policy rule {decision.rule!r} now denies {capability.name}; it was not run",
                        decision.rule,
                    )
            ctx = gateway.context(approval.key_name, approval.session_id, invocation_id)
            data = await capability.handler(ctx, inputs)
            return InvocationResult(
                invocation_id=invocation_id,
                capability=approval.capability,
                success=True,
                data=data,
                error=None,
                duration_ms=0.0,
            ).model_dump(mode="json")
        except GatewayError as exc:
            failure = exc
        except Exception:
            log.exception("approved invocation %s failed inside the gateway", approval.approval_id)
            failure = CapabilityFailed("internal_error", "the gateway failed running the approved invocation")
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
        for caller in self.gateway.sessions_of(approval.key_name):
            caller.events.push(APPROVAL_RESOLVED, data)
