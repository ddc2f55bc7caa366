"""MCP's methods over the pipeline: tools are capabilities, under the same policy and approvals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kruxos_gateway import compose
from kruxos_gateway.compose import Parts
from kruxos_gateway.core.sessions import Caller
from kruxos_gateway.mcp.server import LATEST_VERSION, PROTOCOL_VERSIONS, McpServer
from kruxos_gateway.mcp.tools import MAX_TOOL_NAME, WAIT_TOOL
from kruxos_gateway.policy.rules import parse_policy
from kruxos_gateway.storage import store
from kruxos_gateway.storage.db import Database

from .support import make_config, timeout

pytestmark = pytest.mark.asyncio

POLICY = """
version: 1
default: allow
rules:
  - {name: no-secrets, decision: deny, capability: filesystem.read,
     inputs: {path: {glob: "/workspace/secret*"}}}
  - {name: bob-runs-nothing, decision: deny, capability: process.run, keys: [bob]}
  - {name: deploys-need-a-person, decision: require_approval, capability: process.run,
     inputs: {command: {regex: deploy}}}
"""

ALICE = Caller("alice", "mcp-test-session")


@pytest_asyncio.fixture
async def mcp(tmp_path: Path) -> AsyncIterator[tuple[McpServer, Parts]]:
    config = make_config(tmp_path, policy={"approval_poll_interval": 0.05})
    db = Database(config.db_path)
    db.start()
    try:
        for name in ("alice", "bob"):
            await db.run(lambda conn, name=name: store.create_key(conn, name))
        parts = compose.build(config, db, parse_policy(POLICY, "test-policy.yaml"))
        await parts.start()
        try:
            yield McpServer(parts.registry, parts.policy, parts.pipeline, parts.approvals), parts
        finally:
            await parts.close()
    finally:
        await db.close()


async def call(
    server: McpServer, method: str, params: dict[str, Any] | None = None, caller: Caller = ALICE
) -> Any:
    answer = await server.handle(
        caller, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    )
    assert answer is not None
    return answer


async def tool(server: McpServer, name: str, caller: Caller = ALICE, **arguments: Any) -> dict[str, Any]:
    answer = await call(server, "tools/call", {"name": name, "arguments": arguments}, caller)
    assert "result" in answer, answer
    result: dict[str, Any] = answer["result"]
    return result


@pytest.mark.parametrize("version", PROTOCOL_VERSIONS)
async def test_initialize_speaks_each_known_revision(mcp: tuple[McpServer, Parts], version: str) -> None:
    result = (await call(mcp[0], "initialize", {"protocolVersion": version}))["result"]
    assert result["protocolVersion"] == version
    assert result["capabilities"] == {"tools": {"listChanged": False}}
    assert result["serverInfo"]["name"] == "kruxos"


async def test_initialize_answers_an_unknown_revision_with_the_newest(mcp: tuple[McpServer, Parts]) -> None:
    result = (await call(mcp[0], "initialize", {"protocolVersion": "2099-01-01"}))["result"]
    assert result["protocolVersion"] == LATEST_VERSION


async def test_tools_are_the_capabilities_with_names_clients_accept(mcp: tuple[McpServer, Parts]) -> None:
    server, parts = mcp
    tools = {t["name"]: t for t in (await call(server, "tools/list"))["result"]["tools"]}
    assert "filesystem_read" in tools
    assert "state_shared_set" in tools
    assert WAIT_TOOL in tools
    assert all("." not in name and len(name) <= MAX_TOOL_NAME for name in tools)
    read = tools["filesystem_read"]
    assert read["inputSchema"]["required"] == ["path"]
    assert read["inputSchema"]["properties"]["encoding"]["enum"] == ["utf-8", "base64"]
    assert read["annotations"]["readOnlyHint"] is True
    assert tools["filesystem_delete"]["annotations"]["destructiveHint"] is True
    assert "outputSchema" in read
    assert len(tools) == len(parts.registry.list()) + 1


async def test_a_key_is_not_offered_what_its_policy_never_allows(mcp: tuple[McpServer, Parts]) -> None:
    server, _ = mcp
    bobs = {
        t["name"] for t in (await call(server, "tools/list", caller=Caller("bob", "s")))["result"]["tools"]
    }
    alices = {t["name"] for t in (await call(server, "tools/list"))["result"]["tools"]}
    assert "process_run" not in bobs
    assert "process_run" in alices
    assert "filesystem_read" in bobs  # denied for some paths only: still offered


async def test_a_read_returns_structured_content_and_text(mcp: tuple[McpServer, Parts]) -> None:
    server, parts = mcp
    (parts.config.workspace.root / "notes.txt").write_text("hello")
    result = await tool(server, "filesystem_read", path="notes.txt")
    assert result["isError"] is False
    assert result["structuredContent"]["content"] == "hello"
    assert '"hello"' in result["content"][0]["text"]


async def test_a_write_goes_through_the_pipeline_and_is_audited(mcp: tuple[McpServer, Parts]) -> None:
    server, parts = mcp
    result = await tool(server, "filesystem_write", path="out.txt", content="written by mcp")
    assert result["isError"] is False
    assert (parts.config.workspace.root / "out.txt").read_text() == "written by mcp"
    await parts.db.flush()
    rows = await parts.db.run(lambda conn: store.tail_audit(conn, 10))
    assert [(r.key_name, r.capability, r.outcome) for r in rows][-1] == (
        "alice",
        "filesystem.write",
        "success",
    )


async def test_a_denied_call_is_a_tool_error_naming_the_rule(mcp: tuple[McpServer, Parts]) -> None:
    server, _ = mcp
    result = await tool(server, "filesystem_read", path="secret.txt")
    assert result["isError"] is True
    assert result["structuredContent"]["error"]["type"] == "policy_denied"
    assert "no-secrets" in result["content"][0]["text"]


async def test_bad_arguments_are_a_tool_error_naming_the_input(mcp: tuple[McpServer, Parts]) -> None:
    server, _ = mcp
    result = await tool(server, "filesystem_read", path=42)
    assert result["isError"] is True
    assert result["structuredContent"]["error"]["type"] == "invalid_input"
    assert result["structuredContent"]["error"]["details"] == {"input": "path"}


async def test_an_approval_round_trip_runs_the_call_once_and_returns_its_result(
    mcp: tuple[McpServer, Parts],
) -> None:
    server, parts = mcp
    pending = await tool(server, "process_run", command="echo deploy >> deployed.log; cat deployed.log")
    assert pending["isError"] is True
    assert "Nothing ran" in pending["content"][0]["text"]
    approval_id = pending["structuredContent"]["approval"]["approval_id"]
    assert not (parts.config.workspace.root / "deployed.log").exists()

    waiting = asyncio.create_task(
        tool(server, WAIT_TOOL, approval_id=approval_id, timeout_seconds=timeout(20))
    )
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await parts.approvals.decide(approval_id, approve=True, operator="olivia", reason="ok")
    done = await asyncio.wait_for(waiting, timeout(30))
    assert done["isError"] is False
    assert done["structuredContent"]["stdout"] == "deploy\n"
    again = await tool(server, WAIT_TOOL, approval_id=approval_id)  # a second wait does not run it again
    assert again["structuredContent"]["stdout"] == "deploy\n"
    assert (parts.config.workspace.root / "deployed.log").read_text() == "deploy\n"


async def test_waiting_is_bounded_and_says_nothing_ran(mcp: tuple[McpServer, Parts]) -> None:
    server, _ = mcp
    pending = await tool(server, "process_run", command="echo deploy")
    approval_id = pending["structuredContent"]["approval"]["approval_id"]
    result = await tool(server, WAIT_TOOL, approval_id=approval_id, timeout_seconds=0.2)
    assert result["isError"] is True
    assert "still pending: nothing has run yet" in result["content"][0]["text"]


async def test_another_keys_approval_cannot_be_waited_for(mcp: tuple[McpServer, Parts]) -> None:
    server, _ = mcp
    pending = await tool(server, "process_run", command="echo deploy")
    approval_id = pending["structuredContent"]["approval"]["approval_id"]
    result = await tool(server, WAIT_TOOL, Caller("bob", "s"), approval_id=approval_id, timeout_seconds=0)
    assert result["isError"] is True
    assert result["structuredContent"]["error"]["type"] == "not_found"


async def test_a_rejected_approval_says_the_call_did_not_run(mcp: tuple[McpServer, Parts]) -> None:
    server, parts = mcp
    pending = await tool(server, "process_run", command="echo deploy")
    approval_id = pending["structuredContent"]["approval"]["approval_id"]
    await parts.approvals.decide(approval_id, approve=False, operator="olivia", reason="not today")
    result = await tool(server, WAIT_TOOL, approval_id=approval_id, timeout_seconds=timeout(10))
    assert result["isError"] is True
    assert "rejected by olivia: not today; the call did not run" in result["content"][0]["text"]


@pytest.mark.parametrize(
    ("message", "code"),
    [
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": "resources/list"}, -32601, id="unknown-method"),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "nope"}}, -32602, id="tool"
        ),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": []}, -32602, id="params"),
        pytest.param({"jsonrpc": "1.0", "id": 1, "method": "ping"}, -32600, id="not-2.0"),
        pytest.param({"jsonrpc": "2.0", "id": True, "method": "ping"}, -32600, id="bool-id"),
        pytest.param([1, 2], -32600, id="not-an-object"),
    ],
)
async def test_protocol_errors_get_json_rpc_error_codes(
    mcp: tuple[McpServer, Parts], message: Any, code: int
) -> None:
    answer = await mcp[0].handle(ALICE, message)
    assert answer is not None
    assert answer["error"]["code"] == code


async def test_notifications_and_responses_get_no_answer(mcp: tuple[McpServer, Parts]) -> None:
    server, _ = mcp
    assert await server.handle(ALICE, {"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
    assert await server.handle(ALICE, {"jsonrpc": "2.0", "id": 5, "result": {}}) is None
