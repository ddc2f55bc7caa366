"""The blocking agent: the async driver on a private event-loop thread."""

from __future__ import annotations

import threading

import pytest
from kruxos import Agent, CapabilityError, ConnectionClosed, GatewayUnavailable, KruxOS, UnknownCapability

from .sdk_fake_gateway import KEY, FakeGateway


def sdk_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kruxos-sync"]


def test_the_sync_agent_lists_describes_and_invokes(threaded_gateway: FakeGateway) -> None:
    agent = KruxOS.connect(threaded_gateway.address, api_key=KEY)
    try:
        assert [cap.name for cap in agent.capabilities.list(category="filesystem")] == ["filesystem.read"]
        assert agent.capabilities.describe("process.run").permission_tier == "execute"
        assert agent.capabilities.invoke("test.echo", name="x").data == {"name": "x"}
    finally:
        agent.disconnect()


def test_the_sync_agent_raises_the_same_errors_as_the_async_one(threaded_gateway: FakeGateway) -> None:
    with KruxOS.connect(threaded_gateway.address, api_key=KEY) as agent:
        with pytest.raises(UnknownCapability):
            agent.capabilities.invoke("nope.nothing")
        result = agent.capabilities.invoke("filesystem.read", path="/workspace/missing")
        with pytest.raises(CapabilityError, match="not_found"):
            result.raise_for_error()


def test_disconnect_stops_the_sdk_thread_and_later_calls_raise_connection_closed(
    threaded_gateway: FakeGateway,
) -> None:
    before = len(sdk_threads())
    agent: Agent = KruxOS.connect(threaded_gateway.address, api_key=KEY)
    agent.disconnect()
    agent.disconnect()  # idempotent
    assert agent.closed
    assert len(sdk_threads()) == before
    with pytest.raises(ConnectionClosed):
        agent.capabilities.list()


def test_a_failed_sync_connect_leaves_no_thread_behind() -> None:
    before = len(sdk_threads())
    with pytest.raises(GatewayUnavailable):
        KruxOS.connect("127.0.0.1:1", api_key=KEY)
    assert len(sdk_threads()) == before
