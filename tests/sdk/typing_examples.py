"""SDK usage as a type checker sees it: ``mypy --strict tests/sdk/typing_examples.py`` must pass.

Never run, only type-checked (tests/sdk/test_sdk_typing.py runs mypy on it).
"""

from __future__ import annotations

from typing import Any, assert_type

from kruxos import (
    Agent,
    AsyncAgent,
    CapabilityError,
    ConfigurationError,
    GatewayConnectionError,
    KruxOS,
    KruxOSError,
    RateLimited,
    RequestTimeout,
)
from kruxos.errors import ApprovalRequired, InvalidInput, PolicyDenied
from kruxos.models import (
    CapabilityDefinition,
    CapabilityInput,
    ErrorResponse,
    InvocationResult,
    RecoveryAction,
)


async def async_usage() -> None:
    async with KruxOS.connect_async("localhost:7700", api_key="0" * 64, request_timeout=30) as agent:
        assert_type(agent, AsyncAgent)
        caps = await agent.capabilities.list(category="filesystem", tag="safe")
        assert_type(caps, list[CapabilityDefinition])
        cap = await agent.capabilities.describe("filesystem.read")
        first: CapabilityInput = cap.inputs[0]
        tier: str = cap.permission_tier
        result = await agent.capabilities.invoke("filesystem.read", path="/workspace/a.txt")
        assert_type(result, InvocationResult)
        if result.success:
            content: Any = result.data["content"]
        elif result.error is not None:
            error: ErrorResponse = result.error
            actions: list[RecoveryAction] = error.recovery
        result.raise_for_error()
        duration: float = result.duration_ms
        del first, tier, content, error, actions, duration

    agent2 = await KruxOS.connect_async()
    assert_type(agent2, AsyncAgent)
    await agent2.disconnect()


def sync_usage() -> None:
    agent = KruxOS.connect("localhost:7700", api_key="0" * 64)
    assert_type(agent, Agent)
    with agent:
        result = agent.capabilities.invoke("filesystem.list", path="/workspace")
        assert_type(result, InvocationResult)
        assert_type(agent.capabilities.list(), list[CapabilityDefinition])
    agent.disconnect()


def error_fields(exc: KruxOSError) -> str:
    if isinstance(exc, PolicyDenied):
        rule: str | None = exc.rule
        return f"{exc.message} {rule}"
    if isinstance(exc, ApprovalRequired):
        approval: str | None = exc.approval_id
        return approval or ""
    if isinstance(exc, InvalidInput):
        name: str | None = exc.input
        return name or ""
    if isinstance(exc, CapabilityError):
        return f"{exc.type}: {[r.action for r in exc.recovery]} {exc.details}"
    if isinstance(exc, RateLimited):
        retry: float | None = exc.retry_after
        return str(retry)
    if isinstance(exc, RequestTimeout):
        seconds: float = exc.timeout
        return exc.method + str(seconds)
    if isinstance(exc, GatewayConnectionError | ConfigurationError):
        return str(exc)
    return exc.message


async def approval_usage(agent: AsyncAgent, blocking: Agent) -> None:
    from kruxos import ApprovalStatus, ApprovalTimeout

    try:
        await agent.capabilities.invoke("process.run", command="kubectl apply -f deploy.yaml")
    except ApprovalRequired as e:
        if e.approval_id is None:
            return
        try:
            status = await agent.approvals.wait(e.approval_id, timeout=600)
        except ApprovalTimeout as timed_out:
            assert_type(timed_out.timeout, float)
            return
        assert_type(status, ApprovalStatus)
        assert_type(status.approved, bool | None)
        assert_type(status.reason, str | None)
        assert_type(status.data, Any)
        assert_type(await agent.approvals.check(e.approval_id), ApprovalStatus)
        assert_type(blocking.approvals.wait(e.approval_id, timeout=None), ApprovalStatus)
        assert_type(blocking.approvals.check(e.approval_id).resolved, bool)


async def state_usage(agent: AsyncAgent, sync_agent: Agent) -> None:
    from kruxos import (
        AsyncTransaction,
        StateChange,
        StateEntry,
        StateHistory,
        Transaction,
        Watch,
        transaction,
    )

    assert_type(await agent.state.session.set("task.current", {"step": 3}), int)
    assert_type(await agent.state.session.get("task.current"), StateEntry)
    assert_type(await agent.state.session.list(prefix="task."), list[str])
    assert_type(await agent.state.persistent.get("k", version=1), StateEntry)
    assert_type(await agent.state.persistent.history("k", limit=5), StateHistory)
    assert_type(await agent.state.shared.set("counter", 1, expected_version=0), int)

    async def on_change(change: StateChange) -> None:
        assert_type(change.revision, int)

    watch = await agent.state.shared.watch(prefix="config.", callback=on_change)
    assert_type(watch, Watch)
    assert_type(sync_agent.state.shared.watch(prefix="config.", callback=print), Watch)
    async with transaction(agent) as tx:
        assert_type(tx, AsyncTransaction)
        assert_type(
            await tx.invoke("filesystem.write", path="/workspace/a.txt", content="x"), InvocationResult
        )
    with transaction(sync_agent) as sync_tx:
        assert_type(sync_tx, Transaction)
