"""The guide's approval samples run as written against a real gateway; the operator decides with kruxosctl.

Sections: *With error handling* (under policies that require approval for it, or deny it),
*Blocking wait* and *Non-blocking (poll)* (under the shipped default policy).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kruxos import KruxOS
from kruxos.errors import ApprovalRequired
from kruxos_gateway.policy.rules import shipped_default_text

from .guide_gateway import RunningGateway, start_gateway, timeout
from .guide_samples import Sample, python_blocks

SECTIONS = ["With error handling", "Blocking wait", "Non-blocking (poll)"]


@contextmanager
def policed_gateway(base: Path, policy: str) -> Iterator[RunningGateway]:
    (base / "appliance").mkdir(parents=True)
    (base / "policy.yaml").write_text(policy)
    with start_gateway(
        base / "appliance", policy={"file": str(base / "policy.yaml"), "approval_poll_interval": 0.1}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def default_policy_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway under the shipped default policy."""
    with policed_gateway(tmp_path_factory.mktemp("policy") / "default", shipped_default_text()) as running:
        yield running


def ctl(gateway: RunningGateway, *args: str) -> subprocess.CompletedProcess[str]:
    """kruxosctl for ``gateway``, as the operator runs it on the appliance."""
    config = gateway.log.parent / "gateway.yaml"
    return subprocess.run(
        [sys.executable, "-m", "kruxos_gateway.ctl", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )


def pending_approval(gateway: RunningGateway, command: str) -> str:
    """The id of the pending approval for ``process.run`` of ``command``, once the agent has asked."""
    deadline = time.monotonic() + timeout(30)
    wanted = json.dumps({"command": command})[1:-1]
    while time.monotonic() < deadline:
        for line in ctl(gateway, "approvals", "list").stdout.splitlines()[1:]:
            approval_id = line.split()[0]
            shown = ctl(gateway, "approvals", "show", approval_id).stdout
            if "status:     pending" in shown and wanted in shown:
                return approval_id
        time.sleep(0.05)  # polling the operator's view for the agent's request, not a fixed wait
    raise AssertionError(f"no pending approval for {command!r} within {timeout(30)} s")


@contextmanager
def running_sample(gateway: RunningGateway, sample: Sample) -> Iterator[subprocess.Popen[str]]:
    """Start ``sample`` as a program talking to ``gateway``; kill it if the test fails first."""
    program = sample.program(address=gateway.address, key=gateway.key)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("KRUXOS_") and k != "CREDENTIALS_DIRECTORY"
    }
    process = subprocess.Popen(
        [sys.executable, "-c", program], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def finish(process: subprocess.Popen[str], seconds: float = 30) -> str:
    out, err = process.communicate(timeout=timeout(seconds))
    assert process.returncode == 0, err
    return out


@pytest.mark.parametrize("section", SECTIONS)
def test_the_guide_has_one_python_sample_per_approval_section(guide: Path, section: str) -> None:
    assert len(python_blocks(guide.read_text(encoding="utf-8")).get(section, [])) == 1


@pytest.mark.parametrize("sample", ["Blocking wait"], indirect=True)
def test_blocking_wait_prints_the_result_once_the_operator_approves(
    default_policy_gateway: RunningGateway, sample: Sample
) -> None:
    command = "kubectl apply -f deploy.yaml"
    assert f'command="{command}"' in sample.code
    with running_sample(default_policy_gateway, sample) as process:
        approval_id = pending_approval(default_policy_gateway, command)
        assert (
            ctl(default_policy_gateway, "approvals", "approve", approval_id, "--reason", "ok").returncode == 0
        )
        lines = finish(process).splitlines()
    assert lines[0] == f"Approval needed: {approval_id}"
    assert lines[1].startswith("Approved! Result: {'exit_code': ")


@pytest.mark.parametrize("sample", ["Blocking wait"], indirect=True)
def test_blocking_wait_prints_the_operators_reason_when_rejected(
    default_policy_gateway: RunningGateway, sample: Sample
) -> None:
    with running_sample(default_policy_gateway, sample) as process:
        approval_id = pending_approval(default_policy_gateway, "kubectl apply -f deploy.yaml")
        rejected = ctl(
            default_policy_gateway, "approvals", "reject", approval_id, "--reason", "change freeze"
        )
        assert rejected.returncode == 0, rejected.stderr
        out = finish(process)
    assert out == f"Approval needed: {approval_id}\nRejected: change freeze\n"


@pytest.mark.parametrize("sample", ["Non-blocking (poll)"], indirect=True)
def test_polling_ends_once_the_operator_decides(
    default_policy_gateway: RunningGateway, sample: Sample
) -> None:
    assert 'command="deploy.sh"' in sample.code
    with running_sample(default_policy_gateway, sample) as process:
        approval_id = pending_approval(default_policy_gateway, "deploy.sh")
        assert ctl(default_policy_gateway, "approvals", "approve", approval_id).returncode == 0
        assert finish(process) == ""
    shown = ctl(default_policy_gateway, "approvals", "show", approval_id).stdout
    assert "status:     completed" in shown


@pytest.mark.parametrize("sample", ["With error handling"], indirect=True)
def test_with_error_handling_waits_when_the_policy_requires_approval(tmp_path: Path, sample: Sample) -> None:
    policy = "version: 1\ndefault: require_approval\n"
    with policed_gateway(tmp_path / "p", policy) as gateway, running_sample(gateway, sample) as process:
        approval_id = pending_approval(gateway, "ls -la /workspace")
        assert ctl(gateway, "approvals", "approve", approval_id).returncode == 0
        assert finish(process) == f"Waiting for approval: {approval_id}\n"


@pytest.mark.parametrize("sample", ["With error handling"], indirect=True)
def test_with_error_handling_names_the_rule_when_the_policy_denies(tmp_path: Path, sample: Sample) -> None:
    policy = (
        "version: 1\ndefault: allow\nrules:\n"
        "  - {name: no-listing, decision: deny, capability: process.run, why: listings are private}\n"
    )
    with policed_gateway(tmp_path / "p", policy) as gateway, running_sample(gateway, sample) as process:
        out = finish(process)
    message = "policy rule 'no-listing' denies process.run: listings are private"
    assert out == f"Policy blocked: {message}\nRule: no-listing\n"


def test_two_agents_wait_on_their_own_approvals_at_once(default_policy_gateway: RunningGateway) -> None:
    gateway = default_policy_gateway
    created = ctl(gateway, "keys", "create", "second-agent")
    assert created.returncode == 0, created.stderr
    keys = {"first": gateway.key, "second": created.stdout.strip()}

    async def agent(name: str) -> tuple[str, bool | None, str | None]:
        async with KruxOS.connect_async(gateway.address, api_key=keys[name]) as client:
            try:
                await client.capabilities.invoke("process.run", command=f"deploy.sh {name}")
            except ApprovalRequired as e:
                approval_id = e.approval_id
            else:
                raise AssertionError("no approval was required")
            assert approval_id is not None
            result = await client.approvals.wait(approval_id, timeout=timeout(30))
            return result.approval_id, result.approved, result.reason

    async def both() -> list[tuple[str, bool | None, str | None]]:
        waiting = [asyncio.create_task(agent(name)) for name in keys]
        first = await asyncio.to_thread(pending_approval, gateway, "deploy.sh first")
        second = await asyncio.to_thread(pending_approval, gateway, "deploy.sh second")
        await asyncio.to_thread(ctl, gateway, "approvals", "reject", second, "--reason", "not you")
        await asyncio.to_thread(ctl, gateway, "approvals", "approve", first)
        results = await asyncio.gather(*waiting)
        assert [r[0] for r in results] == [first, second]
        return results

    results = asyncio.run(both())
    assert [r[1:] for r in results] == [(True, ""), (False, "not you")]
