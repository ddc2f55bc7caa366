"""The async and sync agents over a real socket, against a scripted gateway."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from kruxos import (
    AuthenticationError,
    CapabilityError,
    ConnectionClosed,
    GatewayUnavailable,
    KruxOS,
    PolicyDenied,
    ProtocolError,
    RateLimited,
    RequestTimeout,
    UnknownCapability,
)

from .sdk_fake_gateway import KEY, FakeGateway, error_object, timeout

pytestmark = pytest.mark.asyncio


async def test_connect_sends_the_key_as_a_bearer_token_and_offers_kruxos_v1(gateway: FakeGateway) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        assert agent.key_name == "alice"
        assert agent.session_id == "sess-1"
    headers = gateway.headers[0]
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["Sec-WebSocket-Protocol"] == "kruxos.v1"


async def test_connect_async_can_be_awaited_instead_of_used_as_a_context_manager(
    gateway: FakeGateway,
) -> None:
    agent = await KruxOS.connect_async(gateway.address, api_key=KEY)
    assert not agent.closed
    await agent.disconnect()
    assert agent.closed


async def test_list_returns_definitions_and_ignores_fields_from_newer_gateways(gateway: FakeGateway) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        caps = await agent.capabilities.list()
    assert [cap.name for cap in caps] == ["filesystem.read", "process.run"]
    assert caps[0].inputs[0].required is True


@pytest.mark.parametrize(
    ("filters", "params"),
    [
        pytest.param({}, {}, id="no-filter-sends-no-params"),
        pytest.param({"category": "filesystem"}, {"category": "filesystem"}, id="category"),
        pytest.param({"tag": "safe"}, {"tag": "safe"}, id="tag"),
        pytest.param({"category": "process", "tag": "x"}, {"category": "process", "tag": "x"}, id="both"),
    ],
)
async def test_list_sends_only_the_filters_given(
    gateway: FakeGateway, filters: dict[str, str], params: dict[str, str]
) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        await agent.capabilities.list(**filters)
    assert gateway.requests[0]["params"] == params


async def test_describe_of_an_unknown_capability_raises_unknown_capability(gateway: FakeGateway) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        with pytest.raises(UnknownCapability):
            await agent.capabilities.describe("nope.nothing")


async def test_invoke_accepts_an_input_called_name(gateway: FakeGateway) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        result = await agent.capabilities.invoke("test.echo", name="n", path="/workspace/x")
    assert result.data == {"name": "n", "path": "/workspace/x"}
    assert gateway.requests[0]["params"] == {
        "name": "test.echo",
        "inputs": {"name": "n", "path": "/workspace/x"},
    }


async def test_a_capability_that_ran_and_failed_is_returned_not_raised(gateway: FakeGateway) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        result = await agent.capabilities.invoke("filesystem.read", path="/workspace/missing")
    assert not result.success
    assert result.error is not None
    assert result.error.type == "not_found"
    with pytest.raises(CapabilityError, match="not_found"):
        _ = result.data


async def test_a_refused_invocation_raises_with_its_structured_fields(gateway: FakeGateway) -> None:
    async def deny(request: dict[str, Any]) -> dict[str, Any]:
        error = error_object("policy_denied", "no shells", rule="no-shell")
        return {"type": "error", "id": request["id"], "error": error}

    gateway.custom = deny
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        with pytest.raises(PolicyDenied) as caught:
            await agent.capabilities.invoke("process.run", command="ls")
    assert caught.value.rule == "no-shell"
    assert caught.value.message == "no shells"
    assert caught.value.capability == "process.run"
    assert str(caught.value) == "policy_denied (process.run): no shells (rule: no-shell)"


async def test_many_invocations_are_in_flight_at_once_and_answered_out_of_order(gateway: FakeGateway) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        slow = asyncio.create_task(agent.capabilities.invoke("test.wait", n=0))
        fast = [await agent.capabilities.invoke("test.echo", n=i) for i in range(1, 4)]
        assert not slow.done()
        gateway.release.set()
        assert (await slow).data == {"n": 0}
    assert [r.data["n"] for r in fast] == [1, 2, 3]


async def test_concurrent_requests_get_distinct_ids(gateway: FakeGateway) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        results = await asyncio.gather(*(agent.capabilities.invoke("test.echo", n=i) for i in range(20)))
    assert [r.data["n"] for r in results] == list(range(20))
    assert len({request["id"] for request in gateway.requests}) == 20


async def test_request_timeout_raises_request_timeout_and_the_connection_stays_usable(
    gateway: FakeGateway,
) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY, request_timeout=timeout(0.2)) as agent:
        with pytest.raises(RequestTimeout, match=r"capabilities\.invoke") as caught:
            await agent.capabilities.invoke("test.never")
        assert isinstance(caught.value, TimeoutError)
        assert (await agent.capabilities.invoke("test.echo", ok=True)).data == {"ok": True}


async def test_requests_in_flight_fail_with_connection_closed_when_the_gateway_closes(
    gateway: FakeGateway,
) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        with pytest.raises(ConnectionClosed) as caught:
            await agent.capabilities.invoke("test.close")
        assert caught.value.code == 1011
        assert caught.value.reason == "boom"
        with pytest.raises(ConnectionClosed):
            await agent.capabilities.list()


async def test_pushed_events_are_delivered_to_listeners_while_requests_are_pending(
    gateway: FakeGateway,
) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        received: asyncio.Queue[Any] = asyncio.Queue()
        agent._connection.add_listener("gateway.shutdown", received.put_nowait)
        pending = asyncio.create_task(agent.capabilities.invoke("test.wait"))
        await gateway.push({"type": "event", "event": "future.event", "data": {}})
        await gateway.push({"type": "event", "event": "gateway.shutdown", "data": {"reason": "draining"}})
        assert await asyncio.wait_for(received.get(), timeout(5)) == {"reason": "draining"}
        gateway.release.set()
        assert (await pending).success


@pytest.mark.parametrize(
    ("status", "error_type", "headers", "expected"),
    [
        pytest.param(401, "authentication_failed", {}, AuthenticationError, id="401-authentication"),
        pytest.param(400, "bad_request", {}, AuthenticationError, id="400-malformed-header"),
        pytest.param(429, "rate_limited", {"Retry-After": "30"}, RateLimited, id="429-rate-limited"),
        pytest.param(503, "unavailable", {}, GatewayUnavailable, id="503-draining"),
        pytest.param(426, "unsupported_protocol", {}, ProtocolError, id="426-unsupported-protocol"),
    ],
)
async def test_a_refused_handshake_raises_the_documented_error(
    gateway: FakeGateway, status: int, error_type: str, headers: dict[str, str], expected: type[Exception]
) -> None:
    gateway.refusal = (status, headers, {"error": error_object(error_type, "refused because reasons")})
    with pytest.raises(expected, match="refused because reasons"):
        await KruxOS.connect_async(gateway.address, api_key=KEY)


async def test_rate_limited_carries_retry_after_in_seconds(gateway: FakeGateway) -> None:
    gateway.refusal = (429, {"Retry-After": "30"}, {"error": error_object("rate_limited", "slow down")})
    with pytest.raises(RateLimited) as caught:
        await KruxOS.connect_async(gateway.address, api_key=KEY)
    assert caught.value.retry_after == 30
    assert "retry after 30 s" in str(caught.value)


async def test_an_unreachable_gateway_raises_gateway_unavailable(gateway: FakeGateway) -> None:
    port = gateway.port
    gateway.release.set()
    async with KruxOS.connect_async(gateway.address, api_key=KEY):
        pass
    with pytest.raises(GatewayUnavailable, match="cannot reach"):
        # port 1 on loopback: nothing listens there and the connection is refused at once
        await KruxOS.connect_async("127.0.0.1:1", api_key=KEY)
    assert port


async def test_a_frame_other_than_hello_first_is_a_protocol_error(gateway: FakeGateway) -> None:
    gateway.hello = {"type": "event", "event": "x", "data": None}
    with pytest.raises(ProtocolError, match="hello"):
        await KruxOS.connect_async(gateway.address, api_key=KEY)


async def test_debug_logging_shows_frames_but_never_the_key(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        await agent.capabilities.invoke("test.echo", x=1)
    assert any('"method":"capabilities.invoke"' in r.getMessage() for r in caplog.records)
    assert any(r.name == "kruxos" and r.levelno == logging.INFO for r in caplog.records)
    client_side = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    assert any(r.name == "websockets.client" and "Authorization" in r.getMessage() for r in client_side)
    assert all(KEY not in r.getMessage() for r in client_side)


async def test_requests_beyond_max_in_flight_wait_client_side_instead_of_failing(
    gateway: FakeGateway,
) -> None:
    gateway.hello["limits"]["max_in_flight"] = 2
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        calls = [asyncio.create_task(agent.capabilities.invoke("test.wait", n=i)) for i in range(5)]
        await gateway.wait_for_requests(2)
        await asyncio.wait(calls, timeout=timeout(0.1))
        assert len(gateway.requests) == 2
        gateway.release.set()
        assert [(await call).data["n"] for call in calls] == list(range(5))


async def test_disconnect_fails_requests_still_in_flight_with_connection_closed(gateway: FakeGateway) -> None:
    agent = await KruxOS.connect_async(gateway.address, api_key=KEY)
    pending = asyncio.create_task(agent.capabilities.invoke("test.never"))
    await gateway.wait_for_requests(1)
    await agent.disconnect()
    with pytest.raises(ConnectionClosed):
        await pending
