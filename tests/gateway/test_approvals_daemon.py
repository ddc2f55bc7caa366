"""Approvals and policy with the gateway as a process: kruxosctl decisions, restarts, crashes, reloads."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kruxos import ApprovalRequired, ApprovalTimeout, KruxOS, PolicyDenied
from kruxos_gateway.storage import store

from .support import timeout, wait_until
from .test_daemon import Daemon, daemons, write_config

__all__ = ["daemons"]  # the fixture, imported for the tests below

POLICY = """\
version: 1
default: allow
rules:
  - name: deploys-need-a-person
    decision: require_approval
    capability: process.run
    inputs: {command: {regex: 'deploy'}}
  - name: no-sudo
    decision: deny
    capability: process.run
    inputs: {command: {regex: '^sudo'}}
"""


class Appliance:
    """A gateway process with a policy file, its state, and kruxosctl pointed at it."""

    def __init__(self, tmp_path: Path, daemons: list[Daemon], policy: str = POLICY) -> None:
        self.tmp_path = tmp_path
        self.daemons = daemons
        self.policy = tmp_path / "policy.yaml"
        self.policy.write_text(policy)
        self.config = write_config(
            tmp_path, f"policy: {{file: {self.policy}, approval_poll_interval: 0.1}}\n"
        )
        (tmp_path / "state").mkdir()
        conn = store.connect(tmp_path / "state" / "gateway.db")
        self.key = store.create_key(conn, "alice")
        conn.close()
        self.workspace = tmp_path / "workspace"
        self.daemon: Daemon | None = None
        self.address = ""

    def start(self) -> Daemon:
        (self.tmp_path / "port").unlink(missing_ok=True)
        self.daemon = Daemon(self.tmp_path, self.config)
        self.daemons.append(self.daemon)
        self.address = f"127.0.0.1:{self.daemon.wait_ready()}"
        return self.daemon

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kruxos_gateway.ctl", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout(30),
            check=False,
        )

    def approval_needed(self, command: str) -> str:
        with (
            KruxOS.connect(self.address, api_key=self.key) as agent,
            pytest.raises(ApprovalRequired) as caught,
        ):
            agent.capabilities.invoke("process.run", command=command)
        assert caught.value.approval_id is not None
        return caught.value.approval_id


@pytest.fixture
def appliance(tmp_path: Path, daemons: list[Daemon]) -> Appliance:
    appliance = Appliance(tmp_path, daemons)
    appliance.start()
    return appliance


def test_kruxosctl_approves_and_the_waiting_agent_gets_the_result(appliance: Appliance) -> None:
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent:
        with pytest.raises(ApprovalRequired) as caught:
            agent.capabilities.invoke("process.run", command="echo deploy")
        approval_id = caught.value.approval_id
        assert approval_id is not None
        listed = appliance.ctl("approvals", "list")
        assert approval_id in listed.stdout
        approved = appliance.ctl(
            "approvals", "approve", approval_id, "--operator", "olivia", "--reason", "ok"
        )
        assert approved.returncode == 0, approved.stderr
        result = agent.approvals.wait(approval_id, timeout=timeout(10))
    assert result.approved is True
    assert result.data["stdout"] == "deploy\n"
    shown = appliance.ctl("approvals", "show", approval_id).stdout
    assert "status:     completed" in shown
    assert "approved by olivia: ok" in shown
    assert "operator:olivia  process.run  approved" in appliance.ctl("audit", "tail").stdout


def test_kruxosctl_reject_needs_a_reason_and_the_agent_receives_it(appliance: Appliance) -> None:
    approval_id = appliance.approval_needed("echo deploy")
    assert appliance.ctl("approvals", "reject", approval_id).returncode == 2
    rejected = appliance.ctl("approvals", "reject", approval_id, "--reason", "not today")
    assert rejected.returncode == 0, rejected.stderr
    again = appliance.ctl("approvals", "approve", approval_id)
    assert again.returncode == 2
    assert "already rejected" in again.stderr
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent:
        result = agent.approvals.wait(approval_id, timeout=timeout(10))
    assert (result.approved, result.reason, result.status) == (False, "not today", "rejected")


def test_a_wait_that_times_out_leaves_the_approval_pending(appliance: Appliance) -> None:
    approval_id = appliance.approval_needed("echo deploy")
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent:
        with pytest.raises(ApprovalTimeout) as caught:
            agent.approvals.wait(approval_id, timeout=0.2)
        assert caught.value.approval_id == approval_id
        assert isinstance(caught.value, TimeoutError)
        assert agent.approvals.check(approval_id).status == "pending"


def test_a_pending_approval_survives_a_restart(appliance: Appliance) -> None:
    approval_id = appliance.approval_needed("echo deploy >> deployed")
    assert appliance.daemon is not None
    assert appliance.daemon.stop() == 0
    appliance.start()
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent:
        assert agent.approvals.check(approval_id).status == "pending"
        assert appliance.ctl("approvals", "approve", approval_id).returncode == 0
        result = agent.approvals.wait(approval_id, timeout=timeout(10))
    assert result.success is True
    assert (appliance.workspace / "deployed").read_text() == "deploy\n"


def test_a_decision_made_while_the_gateway_is_down_applies_once_it_is_back(appliance: Appliance) -> None:
    approval_id = appliance.approval_needed("echo deploy >> deployed")
    assert appliance.daemon is not None
    appliance.daemon.stop()
    approved = appliance.ctl("approvals", "approve", approval_id)
    assert approved.returncode == 0
    assert "no running gateway was signalled" in approved.stderr
    appliance.start()
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent:
        result = agent.approvals.wait(approval_id, timeout=timeout(10))
    assert result.data["stdout"] == ""
    assert (appliance.workspace / "deployed").read_text() == "deploy\n"


def test_an_approved_invocation_is_not_run_again_after_a_restart(appliance: Appliance) -> None:
    approval_id = appliance.approval_needed("echo deploy >> deployed")
    assert appliance.ctl("approvals", "approve", approval_id).returncode == 0
    wait_until(lambda: "status:     completed" in appliance.ctl("approvals", "show", approval_id).stdout)
    assert appliance.daemon is not None
    appliance.daemon.stop()
    appliance.start()
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent:
        assert agent.approvals.check(approval_id).status == "completed"
    assert (appliance.workspace / "deployed").read_text() == "deploy\n"


def test_a_run_cut_off_by_a_crash_is_interrupted_not_repeated(appliance: Appliance) -> None:
    command = "echo deploy >> deployed; touch started; while [ ! -f go ]; do sleep 0.01; done"
    approval_id = appliance.approval_needed(command)
    assert appliance.ctl("approvals", "approve", approval_id).returncode == 0
    wait_until(lambda: (appliance.workspace / "started").exists(), seconds=10)
    assert appliance.daemon is not None
    appliance.daemon.stop(signal.SIGKILL)
    (appliance.workspace / "go").touch()  # lets the orphaned command end
    appliance.start()
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent:
        result = agent.approvals.wait(approval_id, timeout=timeout(10))
    assert (result.status, result.approved, result.data) == ("interrupted", True, None)
    assert "not run again" in (result.reason or "")
    assert (appliance.workspace / "deployed").read_text() == "deploy\n"


def test_policy_test_shows_the_deciding_rule(appliance: Appliance) -> None:
    tested = appliance.ctl("policy", "test", "process.run", "command=sudo ls", "--key", "alice")
    assert tested.returncode == 0, tested.stderr
    assert tested.stdout.splitlines()[:2] == ["decision: deny", "rule:     no-sudo (line 8)"]


def test_policy_show_prints_the_policy_in_force(appliance: Appliance) -> None:
    assert appliance.ctl("policy", "show").stdout == POLICY


def test_policy_reload_applies_a_new_policy_without_dropping_connections(appliance: Appliance) -> None:
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent:
        assert agent.capabilities.invoke("process.run", command="true").success
        appliance.policy.write_text("version: 1\ndefault: deny\n")
        reloaded = appliance.ctl("policy", "reload")
        assert reloaded.returncode == 0, reloaded.stderr

        def denied() -> bool:
            try:
                agent.capabilities.invoke("process.run", command="true")
            except PolicyDenied as exc:
                return exc.rule == "default"
            return False

        wait_until(denied)
        assert not agent.closed


def test_policy_reload_refuses_a_broken_file_and_the_gateway_keeps_its_policy(appliance: Appliance) -> None:
    appliance.policy.write_text("version: 1\ndefault: allow\nrules:\n  - name: x\n    decision: maybe\n")
    refused = appliance.ctl("policy", "reload")
    assert refused.returncode == 2
    assert (
        f"{appliance.policy}, line 5: rule 'x': decision must be allow, deny or require_approval"
        in refused.stderr
    )
    assert appliance.daemon is not None
    appliance.daemon.proc.send_signal(signal.SIGHUP)  # even if signalled directly, it refuses the file
    wait_until(lambda: "policy reload refused" in appliance.daemon.stderr if appliance.daemon else False)
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent, pytest.raises(PolicyDenied):
        agent.capabilities.invoke("process.run", command="sudo true")


def test_a_broken_policy_stops_the_gateway_at_start_up(tmp_path: Path, daemons: list[Daemon]) -> None:
    appliance = Appliance(tmp_path, daemons, policy="version: 1\ndefault: allow\nrules: {}\n")
    daemon = Daemon(tmp_path, appliance.config)
    daemons.append(daemon)
    assert daemon.proc.wait(timeout(15)) == 2
    assert (
        daemon.stderr
        == f"kruxos-gateway: policy error: {appliance.policy}, line 3: rules must be a list of rules\n"
    )
