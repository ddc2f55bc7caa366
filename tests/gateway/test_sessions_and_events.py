"""The gateway tracks live sessions and pushes server events to one connection, in order."""

from __future__ import annotations

import asyncio
import json

import pytest
from kruxos_gateway.core.gateway import Caller

from .support import RunningGateway, eventually, timeout

pytestmark = pytest.mark.asyncio


async def test_a_connected_session_is_live_under_its_key(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        session_id = client.hello["session_id"]
        await eventually(lambda: session_id in gateway.server.app.sessions)
        assert [c.session_id for c in gateway.server.app.sessions_of("alice")] == [session_id]
        assert gateway.server.app.sessions_of("bob") == []
    await eventually(lambda: session_id not in gateway.server.app.sessions)


async def test_session_closed_hooks_run_with_the_closed_session(gateway: RunningGateway) -> None:
    closed: list[str] = []

    async def remember(caller: Caller) -> None:
        closed.append(caller.session_id)

    gateway.parts.sessions.on_closed(remember)
    async with gateway.client() as client:
        session_id = client.hello["session_id"]
    await eventually(lambda: closed == [session_id])


async def test_pushed_events_reach_their_connection_in_push_order(gateway: RunningGateway) -> None:
    async with gateway.client() as client, gateway.client() as bystander:
        session_id = client.hello["session_id"]
        await eventually(lambda: session_id in gateway.server.app.sessions)
        caller = gateway.parts.sessions.of_key("alice")[0]
        for n in range(50):
            caller.events.push("test.counted", {"n": n})
        received = [json.loads(await asyncio.wait_for(client.ws.recv(), timeout(5))) for _ in range(50)]
        assert [(f["type"], f["event"], f["data"]["n"]) for f in received] == [
            ("event", "test.counted", n) for n in range(50)
        ]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bystander.ws.recv(), 0.2)
