"""/mcp over plain HTTP and WebSocket, without an MCP library: keys, origins, sessions, revocation.

Runs on both dependency sets (tests/gateway/test_mcp_clients.py drives the real client libraries).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kruxos_gateway.storage import store
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from ..helpers import timeout
from .support import RunningGateway, http_get, http_request, make_config, running_gateway

pytestmark = pytest.mark.asyncio

MCP = Subprotocol("mcp")
JSON_OR_SSE = "application/json, text/event-stream"


@pytest_asyncio.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    config = make_config(tmp_path)
    (config.workspace.root / "notes.txt").write_text("hello from the workspace")
    async with running_gateway(config) as gw:
        yield gw


def url(gateway: RunningGateway, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{gateway.port}/mcp"


def rpc(method: str, request_id: int | None = 1, **params: Any) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        message["id"] = request_id
    return json.dumps(message).encode()


def auth(gateway: RunningGateway, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.key}", **extra}


async def test_a_post_without_a_key_gets_401_and_no_oauth(gateway: RunningGateway) -> None:
    status, headers, body = await http_post(gateway.port, "/mcp", rpc("ping"), {})
    assert status == 401
    assert "www-authenticate" not in headers
    assert json.loads(body)["error"]["type"] == "authentication_failed"
    status, _, _ = await http_get(gateway.port, "/.well-known/oauth-authorization-server")
    assert status == 404


async def test_initialize_opens_a_session_that_later_requests_share(gateway: RunningGateway) -> None:
    status, headers, body = await http_post(
        gateway.port, "/mcp", rpc("initialize", protocolVersion="2025-11-25"), auth(gateway)
    )
    assert status == 200
    assert json.loads(body)["result"]["protocolVersion"] == "2025-11-25"
    session = headers["mcp-session-id"]
    in_session = auth(gateway, **{"Mcp-Session-Id": session})
    remember = rpc("tools/call", name="state_session_set", arguments={"key": "task", "value": 7})
    assert (await http_post(gateway.port, "/mcp", remember, in_session))[0] == 200
    recall = rpc("tools/call", name="state_session_get", arguments={"key": "task"})
    _, _, body = await http_post(gateway.port, "/mcp", recall, in_session)
    assert json.loads(body)["result"]["structuredContent"]["value"] == 7
    _, _, body = await http_post(gateway.port, "/mcp", recall, auth(gateway))  # no session: its own
    assert json.loads(body)["result"]["structuredContent"]["found"] is False
    status, _, _ = await http_request(gateway.port, "DELETE", "/mcp", b"", in_session)
    assert status == 204
    status, _, body = await http_post(gateway.port, "/mcp", recall, in_session)
    assert status == 404  # ended: the client initializes again
    assert json.loads(body)["error"]["recovery"][0]["action"] == "initialize"


async def test_another_keys_session_id_is_unknown(gateway: RunningGateway) -> None:
    other = await gateway.db.run(functools.partial(store.create_key, name="mallory"))
    _, headers, _ = await http_post(gateway.port, "/mcp", rpc("initialize"), auth(gateway))
    session = headers["mcp-session-id"]
    stolen = {"Authorization": f"Bearer {other}", "Mcp-Session-Id": session}
    status, _, _ = await http_post(gateway.port, "/mcp", rpc("ping"), stolen)
    assert status == 404


async def test_a_batch_is_answered_as_an_array(gateway: RunningGateway) -> None:
    batch = (
        b"[" + rpc("ping", 1) + b"," + rpc("notifications/initialized", None) + b"," + rpc("ping", 2) + b"]"
    )
    status, _, body = await http_post(gateway.port, "/mcp", batch, auth(gateway))
    assert status == 200
    assert [answer["id"] for answer in json.loads(body)] == [1, 2]


async def test_a_body_that_is_not_json_is_a_parse_error(gateway: RunningGateway) -> None:
    status, _, body = await http_post(gateway.port, "/mcp", b"{nope", auth(gateway))
    assert status == 400
    assert json.loads(body)["error"]["code"] == -32700


async def test_a_page_on_this_machine_may_call_a_loopback_gateway(gateway: RunningGateway) -> None:
    status, _, _ = await http_post(
        gateway.port, "/mcp", rpc("ping"), auth(gateway, Origin="http://localhost:3000")
    )
    assert status == 200


async def test_a_revoked_keys_websocket_ends_at_its_next_message(gateway: RunningGateway) -> None:
    async with connect(url(gateway, "ws"), subprotocols=[MCP], additional_headers=auth(gateway)) as ws:
        await ws.send(rpc("ping").decode())
        assert json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))["id"] == 1
        await gateway.db.run(functools.partial(store.revoke_key, name="alice"))
        await ws.send(rpc("ping", 2).decode())
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout(10))
        assert ws.close_code == 4401
    status, _, _ = await http_post(gateway.port, "/mcp", rpc("ping"), auth(gateway))
    assert status == 401


async def test_a_web_page_from_elsewhere_is_refused(gateway: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {gateway.key}", "Origin": "http://evil.example"}
    ping = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    status, _, _ = await http_post(gateway.port, "/mcp", ping, headers)
    assert status == 403


async def test_notifications_get_202_and_get_without_upgrade_405(gateway: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {gateway.key}"}
    note = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
    status, _, body = await http_post(gateway.port, "/mcp", note, headers)
    assert (status, body) == (202, b"")
    status, _, _ = await http_get(gateway.port, "/mcp", headers)
    assert status == 405


async def test_the_websocket_path_speaks_json_rpc_per_text_frame(gateway: RunningGateway) -> None:
    headers = {"Authorization": f"Bearer {gateway.key}"}
    async with connect(url(gateway, "ws"), subprotocols=[MCP], additional_headers=headers) as ws:
        initialize = {"protocolVersion": "2025-06-18"}
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize}))
        init = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
        assert init["result"]["protocolVersion"] == "2025-06-18"
        call = {"name": "filesystem_read", "arguments": {"path": "notes.txt"}}
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}))
        read = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
        assert read["id"] == 2
        assert read["result"]["structuredContent"]["content"] == "hello from the workspace"
    wrong = {"Authorization": "Bearer " + "1" * 64}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url(gateway, "ws"), subprotocols=[MCP], additional_headers=wrong):
            pass
    assert refused.value.response.status_code == 401


async def http_post(
    port: int, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """A JSON-RPC POST as MCP clients send it."""
    return await http_request(
        port, "POST", path, body, {"Content-Type": "application/json", "Accept": JSON_OR_SSE, **headers}
    )


async def test_one_key_cannot_hold_more_than_max_in_flight_and_others_still_get_in(tmp_path: Path) -> None:
    async with running_gateway(make_config(tmp_path, limits={"max_in_flight": 2})) as gw:
        other = await gw.db.run(functools.partial(store.create_key, name="bob"))
        slow = rpc("tools/call", name="process_run", arguments={"command": "sleep 1"})
        held = [asyncio.create_task(http_post(gw.port, "/mcp", slow, auth(gw))) for _ in range(2)]
        await asyncio.sleep(0.3)
        status, _, body = await http_post(gw.port, "/mcp", rpc("ping"), auth(gw))
        assert status == 429
        assert json.loads(body)["error"]["type"] == "too_many_requests"
        async with connect(url(gw, "ws"), subprotocols=[MCP], additional_headers=auth(gw)) as ws:
            await ws.send(rpc("ping", 9).decode())
            refused = json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))
            assert (refused["id"], refused["error"]["code"]) == (9, -32000)
        bobs, _, _ = await http_post(gw.port, "/mcp", rpc("ping"), {"Authorization": f"Bearer {other}"})
        assert bobs == 200
        assert [s for s, _, _ in await asyncio.gather(*held)] == [200, 200]
        status, _, _ = await http_post(gw.port, "/mcp", rpc("ping"), auth(gw))
        assert status == 200  # the slots are free again


async def test_an_unknown_protocol_version_header_is_a_bad_request(gateway: RunningGateway) -> None:
    newer = auth(gateway, **{"MCP-Protocol-Version": "2099-01-01"})
    status, _, body = await http_post(gateway.port, "/mcp", rpc("ping"), newer)
    assert status == 400
    assert "2025-11-25" in json.loads(body)["error"]["recovery"][0]["description"]
    known = auth(gateway, **{"MCP-Protocol-Version": "2025-06-18"})
    assert (await http_post(gateway.port, "/mcp", rpc("ping"), known))[0] == 200


async def test_mcp_websockets_count_toward_the_keys_connection_quota(tmp_path: Path) -> None:
    async with running_gateway(make_config(tmp_path, quotas={"connections": 2})) as gw:
        async with (
            connect(url(gw, "ws"), subprotocols=[MCP], additional_headers=auth(gw)),
            gw.client(),  # a supervision connection takes the other slot
        ):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url(gw, "ws"), subprotocols=[MCP], additional_headers=auth(gw)):
                    pass
            assert refused.value.response.status_code == 429
        async with connect(url(gw, "ws"), subprotocols=[MCP], additional_headers=auth(gw)) as ws:
            await ws.send(rpc("ping").decode())  # the slots came back when the connections ended
            assert json.loads(await asyncio.wait_for(ws.recv(), timeout(10)))["id"] == 1
