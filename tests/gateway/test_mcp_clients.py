"""Real MCP clients against the gateway's /mcp: the official Python SDK, FastMCP, a plain WebSocket,
the SDK's stdio bridge, and (where Node is installed) mcp-remote, as Claude Desktop would run it.

The client libraries come from PyPI (requirements/mcp-clients.txt, installed into the newest-release
environment only: they need newer pydantic than Debian 13 ships); where they are absent these tests
skip, saying so.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kruxos_gateway.policy.rules import parse_policy
from websockets.typing import Subprotocol

from ..helpers import ROOT, timeout
from .support import RunningGateway, make_config, running_gateway

pytestmark = pytest.mark.asyncio

_MISSING = "is not installed (requirements/mcp-clients.txt, newest-release environment only)"
mcp = pytest.importorskip("mcp", reason=f"the official MCP client {_MISSING}")
fastmcp = pytest.importorskip("fastmcp", reason=f"FastMCP {_MISSING}")
httpx2 = pytest.importorskip("httpx2", reason=f"httpx2, the MCP client's HTTP library, {_MISSING}")

from fastmcp import Client as FastMcpClient  # noqa: E402
from fastmcp.client.transports import StreamableHttpTransport  # noqa: E402
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

MCP = Subprotocol("mcp")
POLICY = """
version: 1
default: allow
rules:
  - {name: no-secrets, decision: deny, capability: filesystem.read,
     inputs: {path: {glob: "/workspace/secret*"}}}
  - {name: deploys-need-a-person, decision: require_approval, capability: process.run,
     inputs: {command: {regex: deploy}}}
"""


@pytest_asyncio.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    config = make_config(tmp_path, policy={"approval_poll_interval": 0.05})
    (config.workspace.root / "notes.txt").write_text("hello from the workspace")
    async with running_gateway(config, policy=parse_policy(POLICY, "test-policy.yaml")) as gw:
        yield gw


def config_file(gateway: RunningGateway) -> Path:
    """The running gateway's configuration as a file, for kruxosctl."""
    path = gateway.config.state_dir.parent / "gateway.yaml"
    path.write_text(f"state_dir: {gateway.config.state_dir}\nworkspace: {{root: {gateway.workspace}}}\n")
    return path


def url(gateway: RunningGateway, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{gateway.port}/mcp"


@asynccontextmanager
async def official(gateway: RunningGateway, key: str | None = None) -> AsyncIterator[Any]:
    """The official MCP SDK's Streamable HTTP client, its Bearer header set on its HTTP client."""
    headers = {"Authorization": f"Bearer {key or gateway.key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout(30)) as http,
        streamable_http_client(url(gateway), http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def test_the_official_client_lists_reads_writes_and_is_denied(gateway: RunningGateway) -> None:
    async with official(gateway) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
        assert {"filesystem_read", "filesystem_write", "kruxos_wait_for_approval"} <= tools
        read = await session.call_tool("filesystem_read", {"path": "notes.txt"})
        assert read.is_error is False
        assert read.structured_content["content"] == "hello from the workspace"
        wrote = await session.call_tool("filesystem_write", {"path": "from-mcp.txt", "content": "hi"})
        assert wrote.is_error is False
        denied = await session.call_tool("filesystem_read", {"path": "secret.txt"})
        assert denied.is_error is True
        assert "no-secrets" in denied.content[0].text
    assert (gateway.workspace / "from-mcp.txt").read_text() == "hi"


async def test_an_approval_round_trip_approved_from_kruxosctl(gateway: RunningGateway) -> None:
    async with official(gateway) as session:
        pending = await session.call_tool("process_run", {"command": "echo deploy >> ran.log; cat ran.log"})
        assert pending.is_error is True
        assert "Nothing ran" in pending.content[0].text
        approval_id = pending.structured_content["approval"]["approval_id"]
        waiting = asyncio.create_task(
            session.call_tool("kruxos_wait_for_approval", {"approval_id": approval_id, "timeout_seconds": 30})
        )
        await approve(gateway, approval_id)
        done = await asyncio.wait_for(waiting, timeout(40))
        assert done.is_error is False
        assert done.structured_content["stdout"] == "deploy\n"
    assert (gateway.workspace / "ran.log").read_text() == "deploy\n"  # ran once


async def test_fastmcp_lists_reads_writes_is_denied_and_waits_for_an_approval(
    gateway: RunningGateway,
) -> None:
    transport = StreamableHttpTransport(url(gateway), headers={"Authorization": f"Bearer {gateway.key}"})
    async with FastMcpClient(transport) as client:
        assert "filesystem_stat" in {t.name for t in await client.list_tools()}
        stat = await client.call_tool("filesystem_stat", {"path": "notes.txt"})
        assert stat.structured_content["type"] == "file"
        read = await client.call_tool("filesystem_read", {"path": "notes.txt"})
        assert read.structured_content["content"] == "hello from the workspace"
        await client.call_tool("filesystem_write", {"path": "fast.txt", "content": "by fastmcp"})
        denied = await client.call_tool("filesystem_read", {"path": "secret.txt"}, raise_on_error=False)
        assert denied.is_error is True
        pending = await client.call_tool("process_run", {"command": "echo deploy"}, raise_on_error=False)
        assert pending.is_error is True
        approval_id = pending.structured_content["approval"]["approval_id"]
        await approve(gateway, approval_id)
        done = await client.call_tool("kruxos_wait_for_approval", {"approval_id": approval_id})
        assert done.structured_content["stdout"] == "deploy\n"
    assert (gateway.workspace / "fast.txt").read_text() == "by fastmcp"
    wrong = StreamableHttpTransport(url(gateway), headers={"Authorization": "Bearer " + "2" * 64})
    with pytest.raises(Exception, match=r"(?i)error|401|unauthorized"):
        async with FastMcpClient(wrong) as client:
            await client.list_tools()


async def approve(gateway: RunningGateway, approval_id: str) -> None:
    """What the operator does: kruxosctl approvals approve ID."""
    argv = [sys.executable, "-m", "kruxos_gateway.ctl", "--config", str(config_file(gateway))]
    decided = await asyncio.to_thread(
        subprocess.run,
        [*argv, "approvals", "approve", approval_id, "--reason", "fine"],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert decided.returncode == 0, decided.stderr


async def test_a_wrong_key_gets_401_and_no_oauth(gateway: RunningGateway) -> None:
    with pytest.raises((MCPError, httpx2.HTTPStatusError, ExceptionGroup)):  # the client's own words
        async with official(gateway, key="0" * 64):
            pass
    # What the 401 says, and that no OAuth is offered: tests/gateway/test_mcp_http.py.


def bridge_env(gateway: RunningGateway) -> dict[str, str]:
    return {
        **os.environ,
        "KRUXOS_HOST": f"127.0.0.1:{gateway.port}",
        "KRUXOS_API_KEY": gateway.key,
        "PYTHONPATH": str(ROOT / "sdk" / "python"),
    }


async def test_the_stdio_bridge_driven_by_the_official_stdio_client(gateway: RunningGateway) -> None:
    params = StdioServerParameters(command=sys.executable, args=["-m", "kruxos.mcp"], env=bridge_env(gateway))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        assert "filesystem_list" in {t.name for t in (await session.list_tools()).tools}
        listed = await session.call_tool("filesystem_list", {})
        assert "notes.txt" in {e["name"] for e in listed.structured_content["entries"]}


async def test_mcp_remote_through_the_bridge_entry_claude_desktop_would_use(gateway: RunningGateway) -> None:
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip("Node (npx) is not installed here, so mcp-remote cannot run")
    params = StdioServerParameters(
        command=npx,
        args=[
            "-y",
            "mcp-remote",
            url(gateway),
            "--header",
            f"Authorization:Bearer {gateway.key}",
            "--allow-http",
        ],
        env={**os.environ},
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await asyncio.wait_for(session.initialize(), timeout(120))
        assert "filesystem_read" in {t.name for t in (await session.list_tools()).tools}
