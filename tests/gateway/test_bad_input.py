"""Bad input gets a clear error and never harms the daemon or any other connection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .support import RunningGateway, eventually, make_config, running_gateway

pytestmark = pytest.mark.asyncio


async def still_serving(gateway: RunningGateway) -> None:
    """A fresh connection still works end to end."""
    async with gateway.client() as other:
        pong = await other.request("ping")
        assert pong["result"]["pong"] is True


def request(method: str, params: dict[str, Any] | None = None, request_id: str = "1") -> str:
    return json.dumps({"type": "request", "id": request_id, "method": method, "params": params or {}})


def invoke(name: str, **inputs: Any) -> str:
    return request("capabilities.invoke", {"name": name, "inputs": inputs})


@pytest.mark.parametrize(
    ("message", "error_type", "detail"),
    [
        pytest.param("this is not json", "invalid_message", "not valid JSON", id="non-json"),
        pytest.param("[]", "invalid_message", "must be a JSON object", id="json-array"),
        pytest.param(
            '{"type": "subscribe", "id": "1"}', "unknown_message_type", "subscribe", id="unknown-type"
        ),
        pytest.param(
            request("capabilities.teleport"), "unknown_method", "capabilities.teleport", id="unknown-method"
        ),
        pytest.param(
            request("capabilities.describe", {}), "invalid_message", "name", id="params-missing-name"
        ),
        pytest.param(
            invoke("filesystem.teleport"),
            "unknown_capability",
            "filesystem.teleport",
            id="unknown-capability",
        ),
        pytest.param(
            invoke("filesystem.read", path=42),
            "invalid_input",
            "'path' must be a string, got integer",
            id="wrong-input-type",
        ),
        pytest.param(
            invoke("filesystem.read"), "invalid_input", "missing required input 'path'", id="missing-input"
        ),
        pytest.param(
            invoke("filesystem.read", path="a", colour="red"),
            "invalid_input",
            "no input 'colour'",
            id="unknown-input",
        ),
        pytest.param(
            invoke("alerts.send", severity="meh", title="t", message="m"),
            "invalid_input",
            "must be one of",
            id="value-not-allowed",
        ),
    ],
)
async def test_a_bad_frame_gets_a_clear_error_and_the_gateway_keeps_serving(
    gateway: RunningGateway, message: str, error_type: str, detail: str
) -> None:
    async with gateway.client() as client:
        await client.send(message)
        frame = await client.recv()
        assert frame["type"] == "error"
        assert frame["error"]["type"] == error_type
        assert detail in frame["error"]["message"]
        assert frame["error"]["recovery"], "the error says how to recover"
        # The same connection goes on...
        assert (await client.request("ping"))["type"] == "response"
    # ...and so does the gateway.
    await still_serving(gateway)


async def test_an_invalid_input_error_names_the_input(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        frame = await client.invoke("filesystem.read", path=42)
    assert frame["error"]["details"] == {"input": "path"}
    assert frame["error"]["recovery"][0]["action"] == "fix_input"


async def test_a_binary_frame_closes_that_connection_with_1002_only(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        await client.send(b'{"type": "request", "id": "1", "method": "ping"}')
        frame = await client.recv()
        assert frame["error"]["type"] == "invalid_message"
        assert (await client.closed())[0] == 1002
    await still_serving(gateway)


async def test_an_oversized_message_gets_an_error_then_close_1009(tmp_path: Path) -> None:
    async with (
        running_gateway(make_config(tmp_path, limits={"max_message_bytes": 1024})) as gateway,
        gateway.client() as client,
    ):
        assert client.hello["limits"]["max_message_bytes"] == 1024
        await client.send(invoke("filesystem.write", path="big.txt", content="x" * 2000))
        frame = await client.recv()
        assert frame["error"]["type"] == "message_too_large"
        assert frame["id"] is None
        assert (await client.closed())[0] == 1009
        assert not (gateway.workspace / "big.txt").exists()
        await still_serving(gateway)


async def test_requests_past_max_in_flight_get_too_many_requests_and_the_connection_stays_open(
    tmp_path: Path,
) -> None:
    async with running_gateway(make_config(tmp_path, limits={"max_in_flight": 2})) as gateway:
        wait_for_release = "while [ ! -f release ]; do sleep 0.01; done; echo done"
        async with gateway.client() as client:
            slow = [
                await client.send_request(
                    "capabilities.invoke", {"name": "process.run", "inputs": {"command": wait_for_release}}
                )
                for _ in range(2)
            ]
            refused_id = await client.send_request("ping")
            refused = await client.recv()
            assert refused["id"] == refused_id
            assert refused["error"]["type"] == "too_many_requests"
            (gateway.workspace / "release").touch()
            answers = {(await client.recv(10))["id"] for _ in slow}
            assert answers == set(slow)
            assert (await client.request("ping"))["type"] == "response"


async def test_many_requests_in_flight_are_answered_out_of_order_by_id(gateway: RunningGateway) -> None:
    (gateway.workspace / "f.txt").write_text("x")
    async with gateway.client() as client:
        slow_id = await client.send_request(
            "capabilities.invoke",
            {"name": "process.run", "inputs": {"command": "while [ ! -f go ]; do sleep 0.01; done"}},
        )
        fast_id = await client.send_request("ping")
        first = await client.recv()
        assert first["id"] == fast_id
        (gateway.workspace / "go").touch()
        assert (await client.recv(10))["id"] == slow_id


async def test_an_idle_connection_is_closed_with_1001(tmp_path: Path) -> None:
    async with (
        running_gateway(make_config(tmp_path, limits={"idle_timeout": 0.2})) as gateway,
        gateway.client(ping_interval=None) as client,
    ):
        assert await client.closed() == (1001, "idle timeout")


async def test_a_client_closing_normally_gets_1000(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        await client.ws.close()
        assert client.ws.protocol.close_rcvd is not None
        assert client.ws.protocol.close_rcvd.code == 1000


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_a_client_vanishing_mid_request_kills_its_process_and_harms_nothing_else(
    gateway: RunningGateway,
) -> None:
    pid_file = gateway.workspace / "pid"
    async with gateway.client() as client:
        await client.send_request(
            "capabilities.invoke",
            {"name": "process.run", "inputs": {"command": "sleep 30 & echo $! > pid; wait"}},
        )
        await eventually(lambda: pid_file.exists() and pid_file.read_text().endswith("\n"))
        sleeper = int(pid_file.read_text())
        assert alive(sleeper)
        client.ws.transport.abort()
    await eventually(lambda: not alive(sleeper))
    await eventually(lambda: not gateway.server._live)
    await still_serving(gateway)
