"""``agent.approvals``: check, and a wait that is woken by the pushed ``approval.resolved`` event."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kruxos import ApprovalStatus, ApprovalTimeout, CapabilityError, ConnectionClosed, KruxOS
from kruxos.errors import ConfigurationError

from .sdk_fake_gateway import KEY, FakeGateway, error_object, timeout

PENDING: dict[str, Any] = {"approval_id": "apr_1", "status": "pending", "resolved": False, "approved": None}
COMPLETED: dict[str, Any] = {
    "approval_id": "apr_1",
    "status": "completed",
    "resolved": True,
    "approved": True,
    "reason": "",
    "data": {"stdout": "deployed\n"},
    "success": True,
    "error": None,
    "decided_by": "olivia",
    "decided_at": "2026-11-27T14:30:00.123Z",
}


def checks(status: dict[str, Any]) -> Any:
    async def answer(request: dict[str, Any]) -> dict[str, Any]:
        if request["params"]["approval_id"] != "apr_1":
            return {"type": "error", "id": request["id"], "error": error_object("not_found", "no approval")}
        return {"type": "response", "id": request["id"], "result": {"approval": status}}

    return answer


@pytest.mark.asyncio
async def test_check_returns_the_approvals_status(gateway: FakeGateway) -> None:
    gateway.custom = checks(COMPLETED)
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        status = await agent.approvals.check("apr_1")
    assert gateway.requests[-1]["method"] == "approvals.check"
    assert gateway.requests[-1]["params"] == {"approval_id": "apr_1"}
    assert isinstance(status, ApprovalStatus)
    assert (status.resolved, status.approved, status.data, status.decided_by) == (
        True,
        True,
        {"stdout": "deployed\n"},
        "olivia",
    )


@pytest.mark.asyncio
async def test_an_unknown_approval_id_is_a_not_found_capability_error(gateway: FakeGateway) -> None:
    gateway.custom = checks(PENDING)
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        with pytest.raises(CapabilityError) as caught:
            await agent.approvals.check("apr_someone_elses")
    assert caught.value.type == "not_found"


@pytest.mark.asyncio
async def test_wait_returns_at_once_when_already_resolved(gateway: FakeGateway) -> None:
    gateway.custom = checks(COMPLETED)
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        result = await agent.approvals.wait("apr_1", timeout=timeout(5))
    assert result.approved is True


@pytest.mark.asyncio
async def test_wait_is_woken_by_the_pushed_event_without_polling(gateway: FakeGateway) -> None:
    gateway.custom = checks(PENDING)
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        waiting = asyncio.create_task(agent.approvals.wait("apr_1", timeout=timeout(5)))
        await gateway.wait_for_requests(1)
        await gateway.push(
            {"type": "event", "event": "approval.resolved", "data": {**PENDING, "approval_id": "x"}}
        )
        await gateway.push({"type": "event", "event": "approval.resolved", "data": COMPLETED})
        result = await waiting
    assert result.data == {"stdout": "deployed\n"}
    assert len(gateway.requests) == 1  # one check, then only the push


@pytest.mark.asyncio
async def test_a_wait_that_times_out_raises_approval_timeout(gateway: FakeGateway) -> None:
    gateway.custom = checks(PENDING)
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        with pytest.raises(ApprovalTimeout) as caught:
            await agent.approvals.wait("apr_1", timeout=0.05)
    assert caught.value.approval_id == "apr_1"
    assert isinstance(caught.value, TimeoutError)
    assert "stays pending" in str(caught.value)


@pytest.mark.asyncio
async def test_a_wait_ends_with_connection_closed_if_the_connection_drops(gateway: FakeGateway) -> None:
    gateway.custom = checks(PENDING)
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        waiting = asyncio.create_task(agent.approvals.wait("apr_1", timeout=timeout(5)))
        await gateway.wait_for_requests(1)
        await gateway.connections[-1].close(1001, "going away")
        with pytest.raises(ConnectionClosed):
            await waiting


@pytest.mark.asyncio
@pytest.mark.parametrize("bad", [pytest.param(-1, id="negative"), pytest.param("soon", id="not-a-number")])
async def test_a_bad_timeout_is_a_configuration_error(gateway: FakeGateway, bad: Any) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        with pytest.raises(ConfigurationError):
            await agent.approvals.wait("apr_1", timeout=bad)


def test_the_blocking_agent_waits_too(threaded_gateway: FakeGateway) -> None:
    threaded_gateway.custom = checks(COMPLETED)
    with KruxOS.connect(threaded_gateway.address, api_key=KEY) as agent:
        assert agent.approvals.check("apr_1").status == "completed"
        assert agent.approvals.wait("apr_1", timeout=timeout(5)).approved is True
