"""The HTTP side of the port: health without a key, and handshake auth before any upgrade."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from kruxos_gateway import __version__
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .support import RunningGateway, http_get, make_config, running_gateway, timeout

pytestmark = pytest.mark.asyncio


async def refused(
    gateway: RunningGateway, headers: dict[str, str] | None = None, subprotocols: list[str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Attempt a handshake that must be refused; return status, JSON body and headers."""
    if headers is None:
        headers = {"Authorization": f"Bearer {gateway.key}"}
    with pytest.raises(InvalidStatus) as excinfo:
        async with connect(
            gateway.url(), additional_headers=headers, subprotocols=subprotocols, open_timeout=timeout(5)
        ):
            pass
    response = excinfo.value.response
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, json.loads(response.body), dict(response.headers.raw_items())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


V1 = ["kruxos.v1"]


async def test_health_answers_200_over_plain_http_without_a_key(gateway: RunningGateway) -> None:
    status, _, body = await http_get(gateway.port, "/health")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "version": __version__}


async def test_a_valid_key_gets_the_hello_frame_first(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        assert client.hello["protocol"] == "kruxos.v1"
        assert client.hello["key_name"] == "alice"
        assert client.hello["limits"] == {
            "max_message_bytes": 1048576,
            "max_in_flight": 64,
            "idle_timeout": 300.0,
        }
        assert client.ws.subprotocol == "kruxos.v1"


async def test_the_root_path_also_serves_the_supervision_protocol(gateway: RunningGateway) -> None:
    async with gateway.connect_raw(path="/") as ws:
        assert json.loads(await ws.recv())["type"] == "hello"


@pytest.mark.parametrize(
    ("headers", "subprotocols", "status", "error_type", "message"),
    [
        pytest.param({}, V1, 401, "authentication_failed", "no API key", id="no-key"),
        pytest.param(
            bearer("0" * 64), V1, 401, "authentication_failed", "invalid or revoked API key", id="wrong-key"
        ),
        pytest.param(bearer("A" * 64), V1, 400, "bad_request", "malformed Authorization", id="uppercase-hex"),
        pytest.param(bearer("abc"), V1, 400, "bad_request", "malformed Authorization", id="short-key"),
        pytest.param({"Authorization": "Basic eDp5"}, V1, 400, "bad_request", "malformed", id="not-bearer"),
        pytest.param(None, None, 426, "unsupported_protocol", "offered: none", id="no-subprotocol"),
        pytest.param(
            None, ["kruxos.v0"], 426, "unsupported_protocol", "offered: kruxos.v0", id="other-subprotocol"
        ),
    ],
)
async def test_a_refused_handshake_is_a_json_http_error(
    gateway: RunningGateway,
    headers: dict[str, str] | None,
    subprotocols: list[str] | None,
    status: int,
    error_type: str,
    message: str,
) -> None:
    got_status, body, _ = await refused(gateway, headers, subprotocols)
    assert got_status == status
    assert body["error"]["type"] == error_type
    assert message in body["error"]["message"]
    assert body["error"]["recovery"]


async def test_a_revoked_key_is_refused_on_its_next_handshake(gateway: RunningGateway) -> None:
    bob = await gateway.create_key("bob")
    async with gateway.client(bob) as client:
        assert client.hello["key_name"] == "bob"
    await gateway.revoke_key("bob")
    status, body, _ = await refused(gateway, bearer(bob), V1)
    assert status == 401
    assert body["error"]["message"] == "invalid or revoked API key"


async def test_an_unknown_path_is_404(gateway: RunningGateway) -> None:
    status, _, body = await http_get(gateway.port, "/nope")
    assert status == 404
    assert json.loads(body)["error"]["type"] == "not_found"


async def test_failed_handshakes_past_the_limit_get_429_with_retry_after(tmp_path: Path) -> None:
    config = make_config(tmp_path, auth={"failed_handshake_limit": 3, "failed_handshake_window": 60.0})
    async with running_gateway(config) as gateway:
        for _ in range(3):
            assert (await refused(gateway, bearer("1" * 64), V1))[0] == 401
        # Another wrong key waits; a valid key never does (issue #11: the limiter sheds load, it does
        # not guard 256-bit keys, and an agent could otherwise lock every local agent out).
        status, body, headers = await refused(gateway, bearer("1" * 64), V1)
        assert status == 429
        assert body["error"]["type"] == "rate_limited"
        assert 0 < int(headers["Retry-After"]) <= 60
        async with gateway.client() as client:
            assert (await client.result("filesystem.list"))["success"]


async def test_a_client_that_never_finishes_its_handshake_is_dropped(tmp_path: Path) -> None:
    async with running_gateway(make_config(tmp_path, limits={"handshake_timeout": 0.2})) as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        try:
            writer.write(b"GET /v1/supervision HTTP/1.1\r\n")  # and nothing more
            assert await asyncio.wait_for(reader.read(), timeout(5)) == b""
        finally:
            writer.close()
