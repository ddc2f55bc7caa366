"""The SDK's documented behaviours hold against the real gateway, not only against tests/sdk's fake."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kruxos import (
    AuthenticationError,
    CapabilityError,
    ConnectionClosed,
    InvalidInput,
    KruxOS,
    RateLimited,
    UnknownCapability,
)

from .guide_gateway import README, RunningGateway, start_gateway, timeout

OTHER_KEY = "0" * 64


def test_an_unknown_key_raises_authentication_error(gateway: RunningGateway) -> None:
    with pytest.raises(AuthenticationError) as caught:
        KruxOS.connect(gateway.address, api_key=OTHER_KEY)
    assert caught.value.status == 401
    assert OTHER_KEY not in str(caught.value)


def test_the_agent_knows_its_key_name_and_session(gateway: RunningGateway) -> None:
    with KruxOS.connect(gateway.address, api_key=gateway.key) as agent:
        assert agent.key_name == "guide"
        assert agent.session_id


@pytest.mark.parametrize(
    ("inputs", "input_name"),
    [
        pytest.param({"path": 7}, "path", id="wrong-type"),
        pytest.param({}, "path", id="missing-required"),
        pytest.param({"path": "/workspace/README.md", "colour": "red"}, "colour", id="unknown-input"),
    ],
)
def test_invalid_input_is_raised_with_the_input_named(
    gateway: RunningGateway, inputs: dict[str, object], input_name: str
) -> None:
    with KruxOS.connect(gateway.address, api_key=gateway.key) as agent, pytest.raises(InvalidInput) as caught:
        agent.capabilities.invoke("filesystem.read", **inputs)
    assert caught.value.input == input_name


def test_an_unknown_capability_is_raised(gateway: RunningGateway) -> None:
    with KruxOS.connect(gateway.address, api_key=gateway.key) as agent, pytest.raises(UnknownCapability):
        agent.capabilities.invoke("nope.nothing")


def test_a_failed_run_is_a_result_whose_data_raises(gateway: RunningGateway) -> None:
    with KruxOS.connect(gateway.address, api_key=gateway.key) as agent:
        result = agent.capabilities.invoke("filesystem.read", path="/workspace/missing.txt")
    assert not result.success
    assert result.error is not None
    assert result.error.type == "not_found"
    with pytest.raises(CapabilityError, match="not_found"):
        _ = result.data


def test_many_invocations_share_one_connection(gateway: RunningGateway) -> None:
    async def main() -> list[str]:
        async with KruxOS.connect_async(gateway.address, api_key=gateway.key) as agent:
            results = await asyncio.gather(
                *(
                    agent.capabilities.invoke("filesystem.read", path="/workspace/README.md")
                    for _ in range(30)
                )
            )
        return [r.data["content"] for r in results]

    assert asyncio.run(main()) == [README] * 30


def test_a_write_is_visible_to_a_read(gateway: RunningGateway) -> None:
    with KruxOS.connect(gateway.address, api_key=gateway.key) as agent:
        agent.capabilities.invoke(
            "filesystem.write", path="/workspace/notes.txt", content="hé\n"
        ).raise_for_error()
        assert (
            agent.capabilities.invoke("filesystem.read", path="/workspace/notes.txt").data["content"]
            == "hé\n"
        )
    (gateway.workspace / "notes.txt").unlink()


def test_too_many_failed_handshakes_raise_rate_limited_with_retry_after(tmp_path: Path) -> None:
    with start_gateway(tmp_path, auth={"failed_handshake_limit": 1, "failed_handshake_window": 60.0}) as gw:
        with pytest.raises(AuthenticationError):
            KruxOS.connect(gw.address, api_key=OTHER_KEY)
        with pytest.raises(RateLimited) as caught:
            KruxOS.connect(gw.address, api_key=OTHER_KEY)
    assert caught.value.retry_after is not None
    assert 0 < caught.value.retry_after <= 60


def test_a_draining_gateway_announces_shutdown_then_closes_with_1001(tmp_path: Path) -> None:
    async def main(gw: RunningGateway) -> ConnectionClosed:
        async with KruxOS.connect_async(gw.address, api_key=gw.key) as agent:
            announced: asyncio.Queue[object] = asyncio.Queue()
            agent._connection.add_listener("gateway.shutdown", announced.put_nowait)
            gw.process.terminate()
            await asyncio.wait_for(announced.get(), timeout(10))
            await asyncio.wait_for(agent._connection._reader, timeout(30))
            assert agent.closed
            with pytest.raises(ConnectionClosed) as caught:
                await agent.capabilities.list()
            return caught.value

    with start_gateway(tmp_path) as gw:
        closed = asyncio.run(main(gw))
    assert closed.code == 1001
