"""MCP from the SDK's side: client configurations, the appliance's sdk.env, and the stdio bridge."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kruxos import ConfigurationError, KruxOS
from kruxos._config import resolve_url
from kruxos._mcp_config import mcp_config, mcp_url
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..helpers import ROOT, timeout
from .sdk_fake_gateway import KEY, FakeGateway

SUPERVISION = "ws://localhost:7700/v1/supervision"


# --- configurations -----------------------------------------------------------------------------


def test_the_default_entry_is_the_guides_websocket_url_with_a_bearer_header() -> None:
    assert mcp_config(SUPERVISION, KEY) == {
        "mcpServers": {
            "kruxos": {"url": "ws://localhost:7700/mcp", "headers": {"Authorization": f"Bearer {KEY}"}}
        }
    }


def test_printing_a_configuration_prints_json_as_the_guide_shows() -> None:
    printed = str(mcp_config(SUPERVISION, KEY))
    assert printed.startswith(
        '{\n  "mcpServers": {\n    "kruxos": {\n      "url": "ws://localhost:7700/mcp",'
    )
    assert json.loads(printed) == mcp_config(SUPERVISION, KEY)


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        pytest.param(
            "claude-code",
            {"mcpServers": {"kruxos": {"type": "http", "url": "http://localhost:7700/mcp", "headers": ...}}},
            id="claude-code",
        ),
        pytest.param(
            "cursor",
            {"mcpServers": {"kruxos": {"url": "http://localhost:7700/mcp", "headers": ...}}},
            id="cursor",
        ),
        pytest.param(
            "vscode",
            {"servers": {"kruxos": {"type": "http", "url": "http://localhost:7700/mcp", "headers": ...}}},
            id="vscode",
        ),
    ],
)
def test_http_clients_get_streamable_http_entries(client: Any, expected: dict[str, Any]) -> None:
    config = mcp_config(SUPERVISION, KEY, client)
    (root,) = expected
    entry = expected[root]["kruxos"]
    entry["headers"] = {"Authorization": f"Bearer {KEY}"}
    assert config == expected


def test_claude_desktop_gets_the_stdio_bridge_with_host_and_key_in_its_environment() -> None:
    assert mcp_config(SUPERVISION, KEY, "claude-desktop") == {
        "mcpServers": {
            "kruxos": {
                "command": "python3",
                "args": ["-m", "kruxos.mcp"],
                "env": {"KRUXOS_HOST": "localhost:7700", "KRUXOS_API_KEY": KEY},
            }
        }
    }


def test_tls_and_path_prefixes_carry_over_to_the_mcp_url() -> None:
    behind_proxy = "wss://gw.example:443/kruxos/v1/supervision"
    assert mcp_url(behind_proxy) == "wss://gw.example:443/kruxos/mcp"
    assert mcp_url(behind_proxy, http=True) == "https://gw.example:443/kruxos/mcp"
    env = mcp_config(behind_proxy, KEY, "claude-desktop")["mcpServers"]["kruxos"]["env"]
    assert env["KRUXOS_HOST"] == behind_proxy  # the bridge reaches the same gateway


def test_an_unknown_client_is_a_configuration_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"'claude-code'.*'vscode'"):
        mcp_config(SUPERVISION, KEY, "emacs")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_connected_agent_describes_its_own_gateway_and_key(gateway: FakeGateway) -> None:
    async with KruxOS.connect_async(gateway.address, api_key=KEY) as agent:
        config = agent.as_mcp_config()
    assert config["mcpServers"]["kruxos"]["url"] == f"ws://{gateway.address}/mcp"
    assert config["mcpServers"]["kruxos"]["headers"] == {"Authorization": f"Bearer {KEY}"}
    assert KEY not in repr(agent)


# --- the appliance's sdk.env ----------------------------------------------------------------------


def test_without_kruxos_host_the_address_comes_from_the_appliances_sdk_env(tmp_path: Path) -> None:
    sdk_env = tmp_path / "sdk.env"
    sdk_env.write_text("# Where the SDK finds the gateway\nKRUXOS_HOST=localhost:7711\n")
    assert resolve_url(None, {}, sdk_env) == "ws://localhost:7711/v1/supervision"


def test_kruxos_host_wins_over_sdk_env(tmp_path: Path) -> None:
    sdk_env = tmp_path / "sdk.env"
    sdk_env.write_text('KRUXOS_HOST="localhost:7711"\n')
    assert resolve_url(None, {"KRUXOS_HOST": "gw:1"}, sdk_env) == "ws://gw:1/v1/supervision"
    assert resolve_url(None, {}, sdk_env) == "ws://localhost:7711/v1/supervision"  # quotes dropped


def test_a_bad_address_in_sdk_env_names_the_file(tmp_path: Path) -> None:
    sdk_env = tmp_path / "sdk.env"
    sdk_env.write_text("KRUXOS_HOST=http://localhost:7700\n")
    with pytest.raises(ConfigurationError, match=f"KRUXOS_HOST in {sdk_env}"):
        resolve_url(None, {}, sdk_env)


def test_no_address_anywhere_names_the_file_too(tmp_path: Path) -> None:
    absent = tmp_path / "absent.env"
    with pytest.raises(
        ConfigurationError, match=re.escape(f"set KRUXOS_HOST (on the appliance, {absent} sets it)")
    ):
        resolve_url(None, {}, absent)


# --- the stdio bridge -----------------------------------------------------------------------------


class FakeMcp:
    """A WebSocket at /mcp that answers each JSON-RPC request with its method, like the gateway's."""

    def __init__(self) -> None:
        self.port = 0
        self.headers: Headers | None = None
        self.received: list[dict[str, Any]] = []

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.headers = request.headers
        if request.path != "/mcp":
            return connection.respond(404, "not here\n")
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return connection.respond(401, "wrong key\n")
        return None

    async def handler(self, connection: ServerConnection) -> None:
        async for message in connection:
            frame = json.loads(message)
            self.received.append(frame)
            if "id" in frame:
                await connection.send(
                    json.dumps({"jsonrpc": "2.0", "id": frame["id"], "result": {"echo": frame["method"]}})
                )


@pytest_asyncio.fixture
async def fake_mcp() -> AsyncIterator[FakeMcp]:
    fake = FakeMcp()
    async with serve(
        fake.handler,
        "127.0.0.1",
        0,
        subprotocols=["mcp"],
        process_request=fake.process_request,  # type: ignore[list-item]
    ) as server:
        fake.port = next(iter(server.sockets)).getsockname()[1]
        yield fake


async def bridge(port: int, key: str, lines: list[str]) -> tuple[int, list[dict[str, Any]], str]:
    env = {**os.environ, "KRUXOS_HOST": f"127.0.0.1:{port}", "KRUXOS_API_KEY": key}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "sdk" / "python"), env.get("PYTHONPATH", "")])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kruxos.mcp",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate("".join(lines).encode()), timeout(20))
    assert process.returncode is not None
    return process.returncode, [json.loads(line) for line in out.decode().splitlines()], err.decode()


@pytest.mark.asyncio
async def test_the_bridge_relays_each_line_as_one_message_and_each_answer_as_one_line(
    fake_mcp: FakeMcp,
) -> None:
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    status, answers, err = await bridge(fake_mcp.port, KEY, [json.dumps(r) + "\n" for r in requests])
    assert status == 0, err
    assert answers == [
        {"jsonrpc": "2.0", "id": 1, "result": {"echo": "initialize"}},
        {"jsonrpc": "2.0", "id": 2, "result": {"echo": "tools/list"}},
    ]
    assert fake_mcp.received == requests
    assert fake_mcp.headers is not None
    assert fake_mcp.headers["Sec-WebSocket-Protocol"] == "mcp"


@pytest.mark.asyncio
async def test_a_refused_key_ends_the_bridge_with_one_line_on_stderr(fake_mcp: FakeMcp) -> None:
    status, answers, err = await bridge(
        fake_mcp.port, "cd" * 32, ['{"jsonrpc": "2.0", "id": 1, "method": "ping"}\n']
    )
    assert status == 1
    assert answers == []
    assert "the API key was refused" in err
    assert "cd" * 32 not in err
    assert "Traceback" not in err


def test_the_bridge_without_a_key_says_what_to_set(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("KRUXOS_") and k != "CREDENTIALS_DIRECTORY"
    }
    env["KRUXOS_HOST"] = "127.0.0.1:9"
    env["PYTHONPATH"] = str(ROOT / "sdk" / "python")
    finished = subprocess.run(
        [sys.executable, "-m", "kruxos.mcp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(20),
        check=False,
    )
    assert finished.returncode == 2
    assert "KRUXOS_API_KEY" in finished.stderr
    assert finished.stdout == ""
