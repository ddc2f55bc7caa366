"""The gateway's methods (ping, capabilities.list/describe/invoke), independent of the transport.

``Gateway.handle`` turns one validated request into its answer frame. Every invocation, whether it
ran or was refused, is appended to the audit log. A policy hook is consulted after input validation
and before the capability runs; the default allows everything (policies and approvals come later
and raise ``PolicyDenied`` / ``ApprovalRequired`` from the hook).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from . import ids, store
from .approvals import ApprovalParams, Approvals
from .capabilities import Context, Registry, RunAs, validate_inputs
from .capabilities._cgroups import CommandCgroups
from .config import GatewayConfig
from .db import Database
from .errors import CapabilityFailed, GatewayError, InternalError
from .models import (
    CapabilityDefinition,
    DescribeParams,
    ErrorFrame,
    InvocationResult,
    InvokeParams,
    ListParams,
    PingParams,
    RequestFrame,
    ResponseFrame,
)
from .protocol import error_frame, parse_params, response_frame
from .state.service import StateService
from .workspace import Workspace

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Pushes server events to one connection, in the order they are pushed (never blocks)."""

    def push(self, event: str, data: dict[str, Any]) -> None: ...


class _Nowhere:
    """The sink of a caller with no connection (tests of the app alone): events are dropped."""

    def push(self, event: str, data: dict[str, Any]) -> None:
        return None


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the API key's name, the connection's session, and a way to reach it."""

    key_name: str
    session_id: str
    events: EventSink = field(default_factory=_Nowhere, compare=False, repr=False)


SessionHook = Callable[[Caller], Awaitable[None]]


class PolicyHook(Protocol):
    """Decides whether an invocation may run; raises ``PolicyDenied`` or ``ApprovalRequired`` if not."""

    async def evaluate(
        self, ctx: Context, capability: CapabilityDefinition, inputs: dict[str, Any]
    ) -> None: ...


class AllowAll:
    """The v1 policy: every authenticated caller may invoke every capability."""

    async def evaluate(self, ctx: Context, capability: CapabilityDefinition, inputs: dict[str, Any]) -> None:
        return None


class Gateway:
    """Answers requests; shared by every connection."""

    def __init__(
        self,
        config: GatewayConfig,
        db: Database,
        registry: Registry,
        *,
        run_as: RunAs | None = None,
        cgroups: CommandCgroups | None = None,
        policy: PolicyHook | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.registry = registry
        self.workspace = Workspace(config.workspace.root)
        self.run_as = run_as
        self.cgroups = cgroups
        self.policy = policy or AllowAll()
        # Human approvals: approvals.check, exactly-once runs of approved invocations, pushed results.
        self.approvals = Approvals(self)
        # Live sessions by id: features that push events (approvals, state watches) find them here.
        self.sessions: dict[str, Caller] = {}
        self._on_session_closed: list[SessionHook] = []
        # Methods that features add, by name (agent state: state.shared.watch, transaction.*).
        self.methods: dict[str, Callable[[Caller, dict[str, Any]], Awaitable[dict[str, Any]]]] = {}
        # Agent state: state.* capabilities, watches, transactions, briefings (state/service.py).
        self.state = StateService(self)

    def context(self, key_name: str, session_id: str, invocation_id: str) -> Context:
        """What a capability handler gets for one invocation on behalf of ``key_name``."""
        return Context(
            config=self.config,
            workspace=self.workspace,
            db=self.db,
            key_name=key_name,
            session_id=session_id,
            invocation_id=invocation_id,
            run_as=self.run_as,
            cgroups=self.cgroups,
            policy=self.policy.evaluate,  # e.g. for each redirect hop of network.http_request
        )

    # --- sessions -------------------------------------------------------------------------------

    def session_opened(self, caller: Caller) -> None:
        """Called by the transport once a connection is authenticated and greeted."""
        self.sessions[caller.session_id] = caller

    async def session_closed(self, caller: Caller) -> None:
        """Called by the transport when a connection ends; runs every on_session_closed hook."""
        self.sessions.pop(caller.session_id, None)
        for hook in self._on_session_closed:
            try:
                await hook(caller)
            except Exception:
                log.exception("a session-closed hook failed for session %s", caller.session_id)

    def on_session_closed(self, hook: SessionHook) -> None:
        """Run ``hook(caller)`` whenever a session ends (e.g. to drop its session state or watches)."""
        self._on_session_closed.append(hook)

    def sessions_of(self, key_name: str) -> list[Caller]:
        """The live sessions authenticated with the key named ``key_name``."""
        return [c for c in self.sessions.values() if c.key_name == key_name]

    async def handle(self, caller: Caller, request: RequestFrame) -> ResponseFrame | ErrorFrame:
        try:
            return response_frame(request.id, await self._call(caller, request.method, request.params))
        except GatewayError as exc:
            return error_frame(request.id, exc)
        except Exception:
            log.exception("internal error answering %s", request.method)
            return error_frame(request.id, InternalError("internal error in the gateway; see its log"))

    async def _call(self, caller: Caller, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "ping":
            parse_params(PingParams, params, method)
            return {"pong": True, "time": time.time()}
        if method == "capabilities.list":
            filters = parse_params(ListParams, params, method)
            definitions = self.registry.list(filters.category, filters.tag)
            return {"capabilities": [d.model_dump(mode="json") for d in definitions]}
        if method == "capabilities.describe":
            name = parse_params(DescribeParams, params, method).name
            return {"capability": self.registry.get(name).definition.model_dump(mode="json")}
        if method == "capabilities.invoke":
            return await self.invoke(caller, parse_params(InvokeParams, params, method))
        if method == "approvals.check":
            return await self.approvals.check(caller, parse_params(ApprovalParams, params, method))
        if (extension := self.methods.get(method)) is not None:
            return await extension(caller, params)
        raise AssertionError(f"method {method!r} passed the protocol core but has no handler")

    async def invoke(self, caller: Caller, params: InvokeParams) -> dict[str, Any]:
        invocation_id = ids.invocation_id()
        started = time.monotonic()
        outcome = "internal_error"
        try:
            capability = self.registry.get(params.name)
            inputs = validate_inputs(capability.definition, params.inputs)
            ctx = self.context(caller.key_name, caller.session_id, invocation_id)
            await self.policy.evaluate(ctx, capability.definition, inputs)
            data: dict[str, Any] | None = None
            failure: CapabilityFailed | None = None
            try:
                data = await capability.handler(ctx, inputs)
            except CapabilityFailed as exc:
                failure = exc
            outcome = "success" if failure is None else failure.error_type
            return InvocationResult(
                invocation_id=invocation_id,
                capability=capability.name,
                success=failure is None,
                data=data,
                error=failure.to_info() if failure is not None else None,
                duration_ms=_elapsed_ms(started),
            ).model_dump(mode="json")
        except GatewayError as exc:
            outcome = exc.error_type
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):
                outcome = "cancelled"
            raise
        finally:
            self._audit(caller, invocation_id, params, outcome, _elapsed_ms(started))

    def _audit(
        self, caller: Caller, invocation_id: str, params: InvokeParams, outcome: str, duration_ms: float
    ) -> None:
        """Queue the invocation's audit record; it is group-committed off the answer's path (db.py).

        Only the clock is read here: the record (its timestamp text, the digest of the inputs) is
        made on the database thread, with the records of the invocations around it, not on the
        event loop that answers the next request.
        """
        event = store.AuditEvent(
            datetime.now(UTC),
            caller.key_name,
            caller.session_id,
            invocation_id,
            params.name,
            params.inputs,
            outcome,
            duration_ms,
        )
        self.db.submit_row(store.append_audit_events, event)


def _elapsed_ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)
