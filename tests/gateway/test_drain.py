"""Shutdown drains: health 503, gateway.shutdown pushed, in-flight answered, then close 1001."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from .support import RunningGateway, eventually, http_get, make_config, running_gateway, timeout

pytestmark = pytest.mark.asyncio

WAIT_FOR_GO = "while [ ! -f go ]; do sleep 0.01; done; echo finished"


async def test_in_flight_requests_finish_before_the_connection_closes_with_1001(
    gateway: RunningGateway,
) -> None:
    async with gateway.client() as client:
        request_id = await client.send_request(
            "capabilities.invoke", {"name": "process.run", "inputs": {"command": WAIT_FOR_GO}}
        )
        await eventually(lambda: bool(next(iter(gateway.server._live)).session.in_flight))
        shutdown = asyncio.create_task(gateway.server.shutdown())
        event = await client.recv()
        assert event == {"type": "event", "event": "gateway.shutdown", "data": {"reason": "draining"}}

        status, _, body = await http_get(gateway.port, "/health")
        assert status == 503
        assert json.loads(body)["status"] == "draining"

        refused = await client.request("ping")
        assert refused["error"]["type"] == "unavailable"

        (gateway.workspace / "go").touch()
        answer = await client.recv(10)
        assert answer["id"] == request_id
        assert answer["result"]["data"]["stdout"] == "finished\n"
        assert (await client.closed())[0] == 1001
        await asyncio.wait_for(shutdown, timeout(10))


async def test_new_handshakes_are_refused_with_503_while_draining(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        await client.send_request(
            "capabilities.invoke", {"name": "process.run", "inputs": {"command": WAIT_FOR_GO}}
        )
        await eventually(lambda: bool(next(iter(gateway.server._live)).session.in_flight))
        shutdown = asyncio.create_task(gateway.server.shutdown())
        await client.recv()  # gateway.shutdown
        with pytest.raises(InvalidStatus) as excinfo:
            async with gateway.connect_raw():
                pass
        assert excinfo.value.response.status_code == 503
        assert json.loads(excinfo.value.response.body)["error"]["type"] == "unavailable"
        (gateway.workspace / "go").touch()
        await asyncio.wait_for(shutdown, timeout(10))


async def test_requests_still_running_at_drain_timeout_are_cancelled(tmp_path: Path) -> None:
    async with (
        running_gateway(make_config(tmp_path, limits={"drain_timeout": 0.1})) as gateway,
        gateway.client() as client,
    ):
        await client.send_request(
            "capabilities.invoke", {"name": "process.run", "inputs": {"command": "sleep 30"}}
        )
        await eventually(lambda: bool(next(iter(gateway.server._live)).session.in_flight))
        await asyncio.wait_for(gateway.server.shutdown(), timeout(10))
        await client.recv()  # gateway.shutdown
        assert (await client.closed())[0] == 1001
