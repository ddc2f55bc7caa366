"""process.run: a process that ran is a success whatever its exit code; timeouts kill the group."""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from kruxos_gateway.capabilities.process import resolve_run_as

from .support import Client, RunningGateway, make_config, running_gateway, timeout

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[Client]:
    async with gateway.client() as c:
        yield c


async def test_a_command_string_runs_through_the_shell_in_the_workspace(
    gateway: RunningGateway, client: Client
) -> None:
    (gateway.workspace / "f.txt").touch()
    data = await client.data("process.run", command="ls; echo oops >&2")
    assert data["exit_code"] == 0
    assert data["stdout"] == "f.txt\n"
    assert data["stderr"] == "oops\n"
    assert data["timed_out"] is False
    assert data["stdout_truncated"] is False
    assert data["duration_ms"] >= 0


async def test_an_argv_list_runs_without_a_shell(client: Client) -> None:
    data = await client.data("process.run", command=["echo", "$HOME", "a b"])
    assert data["stdout"] == "$HOME a b\n"


async def test_a_non_zero_exit_code_is_still_a_successful_invocation(client: Client) -> None:
    result = await client.result("process.run", command="exit 3")
    assert result["success"] is True
    assert result["data"]["exit_code"] == 3


async def test_cwd_and_env_are_applied(gateway: RunningGateway, client: Client) -> None:
    (gateway.workspace / "sub").mkdir()
    data = await client.data(
        "process.run",
        command='basename "$PWD"; echo "$GREETING"',
        cwd="/workspace/sub",
        env={"GREETING": "hi"},
    )
    assert data["stdout"] == "sub\nhi\n"


async def test_the_gateways_environment_is_not_passed_on(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRUXOS_TEST_SECRET", "s3cret")
    data = await client.data("process.run", command="env")
    assert "s3cret" not in data["stdout"]


async def test_a_timeout_kills_the_process_group_and_returns_partial_output(
    gateway: RunningGateway, client: Client
) -> None:
    started = time.monotonic()
    data = await client.data(
        "process.run", command="echo started; (sleep 30; touch survived) & sleep 30", timeout=0.3
    )
    assert data["timed_out"] is True
    assert data["stdout"] == "started\n"
    assert time.monotonic() - started < timeout(10)
    assert not (gateway.workspace / "survived").exists()


async def test_output_past_the_limit_is_truncated_and_flagged(tmp_path: Path) -> None:
    async with (
        running_gateway(make_config(tmp_path, process={"max_output_bytes": 10})) as gateway,
        gateway.client() as client,
    ):
        data = await client.data("process.run", command="head -c 100000 /dev/zero | tr '\\0' a; echo err >&2")
    assert data["stdout"] == "a" * 10
    assert data["stdout_truncated"] is True
    assert data["stderr_truncated"] is False
    assert data["exit_code"] == 0


async def test_the_timeout_is_capped_by_max_timeout(tmp_path: Path) -> None:
    async with (
        running_gateway(make_config(tmp_path, process={"max_timeout": 0.2})) as gateway,
        gateway.client() as client,
    ):
        data = await client.data("process.run", command="sleep 30", timeout=3600)
    assert data["timed_out"] is True


@pytest.mark.parametrize(
    ("inputs", "error_type"),
    [
        pytest.param({"command": ["/no/such/program"]}, "not_found", id="missing-program"),
        pytest.param({"command": "true", "cwd": "/workspace/missing"}, "not_found", id="missing-cwd"),
    ],
)
async def test_a_command_that_cannot_start_is_a_failed_result(
    client: Client, inputs: dict[str, object], error_type: str
) -> None:
    result = await client.result("process.run", **inputs)
    assert result["success"] is False
    assert result["error"]["type"] == error_type


@pytest.mark.parametrize(
    ("inputs", "bad_input"),
    [
        pytest.param({"command": []}, "command", id="empty-argv"),
        pytest.param({"command": "true", "env": {"A": 1}}, "env", id="non-string-env"),
        pytest.param({"command": "true", "timeout": 0}, "timeout", id="zero-timeout"),
        pytest.param({"command": "echo a\0b"}, "command", id="nul-in-command"),
        pytest.param({"command": "true", "env": {"A=B": "1"}}, "env", id="equals-in-env-name"),
    ],
)
async def test_unusable_inputs_are_refused_before_running(
    client: Client, inputs: dict[str, object], bad_input: str
) -> None:
    frame = await client.invoke("process.run", **inputs)
    assert frame["type"] == "error"
    assert frame["error"]["type"] == "invalid_input"
    assert frame["error"]["details"] == {"input": bad_input}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
async def test_commands_run_as_the_configured_user(shared_tmp: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    config = make_config(shared_tmp, process={"run_as_user": "nobody"})
    (shared_tmp / "workspace").chmod(0o777)
    run_as = resolve_run_as(config.process)
    async with running_gateway(config, run_as=run_as) as gateway, gateway.client() as client:
        data = await client.data("process.run", command="id -u; id -g")
    assert data["stdout"].split() == [str(nobody.pw_uid), str(nobody.pw_gid)]
