"""The invocation pipeline: the one path every capability invocation takes.

Live calls (``capabilities.invoke``), approved replays (``approvals/service.py``), steps of a
transaction (``state/service.py``), and next the MCP endpoint and buffered proxy writes all call
:meth:`Pipeline.invoke`, so each is validated, decided, audited and answered the same way::

    lookup      the capability by name                      UnknownCapability
    validate    the inputs, once, defaults filled in        InvalidInput
    decide      the policy's Decision, a value              (policy/gate.py)
    enforce     act on it: deny → PolicyDenied, require_approval → an approval recorded, then
                ApprovalRequired (nothing ran); an approved replay passes unless a deny came since
    prepare     the caller's stage, after the decision: a transaction's snapshot
    run         the handler: its data, or CapabilityFailed for a failed result
    observe     the observers of a success (the briefing's record of changed files)
    audit       one record per invocation, whatever happened, group-committed (storage/db.py)
    result      an InvocationResult model, serialised once, with the frame that carries it

Errors before ``run`` propagate as the ``GatewayError`` they are (an ``error`` frame for a live call);
a handler's ``CapabilityFailed`` becomes a failed ``InvocationResult``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..capabilities.base import Capability, Context, Registry, RunAs
from ..errors import ApprovalRequired, CapabilityFailed, GatewayError, PolicyDenied
from ..storage import store
from . import ids
from .models import CapabilityDefinition, InvocationResult
from .sessions import Caller

if TYPE_CHECKING:
    from ..capabilities._cgroups import CommandCgroups
    from ..capabilities.workspace import Workspace
    from ..config import GatewayConfig
    from ..policy.rules import Decision
    from ..storage.db import Database

log = logging.getLogger(__name__)


class PolicySource(Protocol):
    """The ``decide`` stage: what the policy in force decides (policy/gate.py's PolicyGate)."""

    def decide(
        self, key_name: str, definition: CapabilityDefinition, inputs: Mapping[str, Any]
    ) -> Decision: ...


@dataclass(frozen=True)
class PendingApproval:
    approval_id: str
    expires_at: str  # ISO 8601 UTC


class ApprovalRequests(Protocol):
    """Records the approval an invocation waits for (approvals/service.py's ApprovalBook)."""

    async def request(
        self, key_name: str, session_id: str, capability: str, inputs: dict[str, Any], rule: str
    ) -> PendingApproval: ...


#: The ``prepare`` stage a caller may add: runs after the decision, before the handler.
Prepare = Callable[[Context, Capability, dict[str, Any]], Awaitable[None]]
#: An observer of successful invocations: (context, capability name, the handler's data).
Observer = Callable[[Context, str, dict[str, Any]], None]


@dataclass(frozen=True)
class Runtime:
    """What handlers get besides their inputs: one gateway's configuration and resources."""

    config: GatewayConfig
    workspace: Workspace
    db: Database
    run_as: RunAs | None = None
    cgroups: CommandCgroups | None = None


class Pipeline:
    """Runs invocations through the stages of the module docstring."""

    def __init__(
        self,
        registry: Registry,
        policy: PolicySource,
        approvals: ApprovalRequests,
        runtime: Runtime,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.approvals = approvals
        self.runtime = runtime
        self.observers = tuple(observers)

    def context(self, key_name: str, session_id: str, invocation_id: str) -> Context:
        """What a handler gets for one invocation on behalf of ``key_name``."""
        rt = self.runtime
        return Context(
            config=rt.config,
            workspace=rt.workspace,
            db=rt.db,
            key_name=key_name,
            session_id=session_id,
            invocation_id=invocation_id,
            run_as=rt.run_as,
            cgroups=rt.cgroups,
            policy=self.check,  # e.g. for each redirect hop of network.http_request
        )

    async def invoke(
        self,
        caller: Caller,
        name: str,
        inputs: dict[str, Any],
        *,
        prepare: Prepare | None = None,
        approval_id: str | None = None,
        invocation_id: str | None = None,
    ) -> InvocationResult:
        """Run one invocation; ``approval_id``: the approval it was waiting for has been granted.

        ``invocation_id``: the id to give it (by default a new one), for a caller that reports a
        failure before the result exists under the same id as the audit record.
        """
        invocation_id = invocation_id or ids.invocation_id()
        started = time.monotonic()
        outcome = "internal_error"
        try:
            capability = self.registry.get(name)
            valid = capability.validate(inputs)
            ctx = self.context(caller.key_name, caller.session_id, invocation_id)
            decision = self.policy.decide(caller.key_name, capability.definition, valid)
            if approval_id is None:
                await self._enforce(ctx, capability.definition, valid, decision)
            elif decision.decision == "deny":  # a deny added since the approval still wins
                raise _denied(capability.definition, decision, after_approval=True)
            if prepare is not None:
                await prepare(ctx, capability, valid)
            data: dict[str, Any] | None = None
            failure: CapabilityFailed | None = None
            try:
                data = await capability.handler(ctx, valid)
            except CapabilityFailed as exc:
                failure = exc
            if failure is None:
                assert data is not None
                self._observe(ctx, capability.name, data)
                outcome = "success"
            else:
                outcome = failure.error_type
            return InvocationResult(
                invocation_id=invocation_id,
                capability=capability.name,
                success=failure is None,
                data=data,
                error=failure.to_info() if failure is not None else None,
                duration_ms=_elapsed_ms(started),
            )
        except GatewayError as exc:
            outcome = exc.error_type
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):
                outcome = "cancelled"
            raise
        finally:
            self._audit(caller, invocation_id, name, inputs, outcome, _elapsed_ms(started))

    async def check(self, ctx: Context, definition: CapabilityDefinition, inputs: dict[str, Any]) -> None:
        """Decide and enforce for other inputs of a running invocation (``Context.check_policy``)."""
        await self._enforce(ctx, definition, inputs, self.policy.decide(ctx.key_name, definition, inputs))

    async def _enforce(
        self, ctx: Context, definition: CapabilityDefinition, inputs: dict[str, Any], decision: Decision
    ) -> None:
        if decision.decision == "allow":
            return
        if decision.decision == "deny":
            raise _denied(definition, decision, after_approval=False)
        pending = await self.approvals.request(
            ctx.key_name, ctx.session_id, definition.name, inputs, decision.rule
        )
        raise ApprovalRequired(
            f"{definition.name} needs a person's approval (rule {decision.rule!r}"
            f"{': ' + decision.why if decision.why else ''}); "
            f"approval {pending.approval_id} is pending",
            pending.approval_id,
            recovery=[
                (
                    "wait_for_approval",
                    f"wait for approval {pending.approval_id} (approvals.wait), then read its result",
                ),
            ],
            details={"rule": decision.rule, "expires_at": pending.expires_at},
        )

    def _observe(self, ctx: Context, name: str, data: dict[str, Any]) -> None:
        for observer in self.observers:
            try:
                observer(ctx, name, data)
            except Exception:  # a record for briefings must never turn a done write into an error
                log.exception("an observer of %s failed", name)

    def _audit(
        self,
        caller: Caller,
        invocation_id: str,
        name: str,
        inputs: dict[str, Any],
        outcome: str,
        duration_ms: float,
    ) -> None:
        """Queue the invocation's audit record; it is group-committed off the answer's path (db.py).

        Only the clock is read here: the record (its timestamp text, the digest of the inputs) is
        made on the database thread, with the records of the invocations around it, not on the
        event loop that answers the next request. The digest is of the inputs as the agent sent
        them, so the record of an approved replay matches the approval's.
        """
        event = store.AuditEvent(
            datetime.now(UTC),
            caller.key_name,
            caller.session_id,
            invocation_id,
            name,
            inputs,
            outcome,
            duration_ms,
        )
        self.runtime.db.submit_row(store.append_audit_events, event)


def _denied(definition: CapabilityDefinition, decision: Decision, *, after_approval: bool) -> PolicyDenied:
    if after_approval:
        message = f"policy rule {decision.rule!r} now denies {definition.name}; it was not run"
    else:
        why = f": {decision.why}" if decision.why else ""
        message = f"policy rule {decision.rule!r} denies {definition.name}{why}"
    return PolicyDenied(
        message,
        decision.rule,
        recovery=[("ask_operator", "do something else, or ask the operator to change the policy")],
    )


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)
