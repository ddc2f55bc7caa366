"""A hostile agent against the policy: path spellings and symlinks, missing policy files, backreferences.

Issue #11: path rules matched the text given (a symlink, ``./``, ``//`` or ``x/../`` slipped past a
deny), a missing policy file silently became the shipped default, and merged regex rules renumbered
their groups so that a backreference stopped matching.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from kruxos import KruxOS, PolicyDenied
from kruxos_gateway.capabilities.builtin import default_registry
from kruxos_gateway.capabilities.workspace import Workspace
from kruxos_gateway.config import PolicyConfig
from kruxos_gateway.ctl.cli import main as kruxosctl
from kruxos_gateway.policy.rules import Policy, PolicyError, configured_policy, parse_policy

from .support import timeout, wait_until
from .test_approvals_daemon import Appliance
from .test_daemon import Daemon, daemons

__all__ = ["daemons"]  # the fixture, imported for the tests below

REGISTRY = default_registry()

DENY_UNDER = """
version: 1
default: allow
rules:
  - {name: no-secrets, decision: deny, inputs: {path: {under: /workspace/secrets}}}
  - {name: no-secret-cwd, decision: deny, capability: process.run, inputs: {cwd: {under: /workspace/secrets}}}
  - {name: no-secret-moves, decision: deny, capability: filesystem.move,
     inputs: {src: {under: /workspace/secrets}}}
"""
DENY_GLOB = """
version: 1
default: allow
rules:
  - {name: no-secret-files, decision: deny, inputs: {path: "/workspace/secrets/*"}}
"""
ALLOW_PUBLIC = """
version: 1
default: deny
rules:
  - {name: public, decision: allow, inputs: {path: {under: /workspace/public}}}
"""


def decide(policy: Policy, capability: str, **inputs: Any) -> tuple[str, str]:
    decision = policy.decide("agent", REGISTRY.get(capability).definition, inputs)
    return decision.decision, decision.rule


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """secrets/k.txt; s -> secrets (a way in); public/in -> ../secrets; secrets/out -> ../public."""
    root = tmp_path / "workspace"
    (root / "secrets").mkdir(parents=True)
    (root / "secrets" / "k.txt").write_text("key\n")
    (root / "public").mkdir()
    (root / "s").symlink_to("secrets")
    (root / "public" / "in").symlink_to("../secrets")
    (root / "secrets" / "out").symlink_to("../public")
    (root / "escape").symlink_to("/etc")
    return Workspace(root)


# --- 1. the canonical path decides -------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "./secrets/k.txt",
        "/workspace//secrets/k.txt",
        "secrets/k.txt",
        "x/../secrets/k.txt",
        "/workspace/x/../secrets/k.txt",
        "/workspace/./secrets/k.txt",
    ],
)
def test_path_spellings_do_not_evade_a_glob_deny(path: str) -> None:
    assert decide(parse_policy(DENY_GLOB), "filesystem.read", path=path) == ("deny", "no-secret-files")


def test_a_leading_double_slash_does_not_evade_an_under_deny() -> None:
    policy = parse_policy(DENY_UNDER)
    assert decide(policy, "filesystem.read", path="//workspace/secrets/k.txt") == ("deny", "no-secrets")


@pytest.mark.parametrize(
    ("capability", "inputs"),
    [
        ("filesystem.read", {"path": "s/k.txt"}),
        ("filesystem.write", {"path": "/workspace/s/new.txt", "content": "x"}),
        ("filesystem.list", {"path": "s"}),
        ("filesystem.mkdir", {"path": "s/sub"}),
        ("filesystem.stat", {"path": "s/k.txt"}),
        ("filesystem.delete", {"path": "s/k.txt"}),
    ],
)
def test_a_symlink_into_a_denied_tree_is_denied(
    workspace: Workspace, capability: str, inputs: dict[str, Any]
) -> None:
    policy = parse_policy(DENY_UNDER, workspace=workspace)
    assert decide(policy, capability, **inputs) == ("deny", "no-secrets")


def test_a_symlink_as_working_directory_is_denied(workspace: Workspace) -> None:
    policy = parse_policy(DENY_UNDER, workspace=workspace)
    assert decide(policy, "process.run", command="cat k.txt", cwd="s") == ("deny", "no-secret-cwd")


def test_a_symlink_into_a_denied_tree_does_not_evade_a_glob(workspace: Workspace) -> None:
    policy = parse_policy(DENY_GLOB, workspace=workspace)
    assert decide(policy, "filesystem.read", path="s/k.txt") == ("deny", "no-secret-files")


def test_a_link_out_of_a_denied_tree_is_still_denied(workspace: Workspace) -> None:
    policy = parse_policy(DENY_UNDER, workspace=workspace)
    assert decide(policy, "filesystem.read", path="secrets/out/notes.txt") == ("deny", "no-secrets")


def test_an_allow_does_not_cover_a_link_that_leaves_its_tree(workspace: Workspace) -> None:
    policy = parse_policy(ALLOW_PUBLIC, workspace=workspace)
    assert decide(policy, "filesystem.read", path="public/notes.txt") == ("allow", "public")
    assert decide(policy, "filesystem.read", path="public/in/k.txt") == ("deny", "default")


def test_stat_delete_and_move_of_a_link_itself_are_judged_by_the_link(workspace: Workspace) -> None:
    # These act on the link, not on what it points to (follow_final=False in the capabilities).
    policy = parse_policy(DENY_UNDER, workspace=workspace)
    assert decide(policy, "filesystem.stat", path="s") == ("allow", "default")
    assert decide(policy, "filesystem.delete", path="s") == ("allow", "default")
    assert decide(policy, "filesystem.move", src="s", dst="t") == ("allow", "default")
    assert decide(policy, "filesystem.move", src="s/k.txt", dst="k.txt") == ("deny", "no-secret-moves")


def test_a_link_out_of_the_workspace_is_left_to_the_capability(workspace: Workspace) -> None:
    # The capability refuses it (path_outside_workspace); the policy judges the path as given.
    policy = parse_policy(DENY_UNDER, workspace=workspace)
    assert decide(policy, "filesystem.read", path="escape/passwd") == ("allow", "default")


def test_the_running_gateway_sees_through_a_symlink_before_and_after_a_reload(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    appliance = Appliance(tmp_path, daemons, policy=DENY_UNDER)
    (appliance.workspace / "secrets").mkdir()
    (appliance.workspace / "secrets" / "k.txt").write_text("key\n")
    (appliance.workspace / "s").symlink_to("secrets")
    daemon = appliance.start()
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent:
        with pytest.raises(PolicyDenied) as caught:
            agent.capabilities.invoke("filesystem.read", path="s/k.txt")
        assert caught.value.rule == "no-secrets"
        daemon.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "policy reloaded" in daemon.stderr)
        with pytest.raises(PolicyDenied):
            agent.capabilities.invoke("filesystem.read", path="/workspace/s/k.txt")


def test_kruxosctl_policy_test_sees_through_a_symlink(
    tmp_path: Path, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(DENY_UNDER)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nworkspace: {{root: {workspace.root}}}\n"
        f"policy: {{file: {policy}}}\n"
    )
    assert kruxosctl(["--config", str(config), "policy", "test", "filesystem.read", "path=s/k.txt"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["decision: deny", "rule:     no-secrets (line 5)"]


# --- 2. a missing policy file is refused --------------------------------------------------------


def test_a_missing_policy_file_named_by_the_configuration_stops_the_gateway(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    appliance = Appliance(tmp_path, daemons)
    appliance.policy.unlink()
    daemon = Daemon(tmp_path, appliance.config)
    daemons.append(daemon)
    assert daemon.proc.wait(timeout(15)) == 2
    lines = daemon.stderr.splitlines()
    assert len(lines) == 1, daemon.stderr
    assert lines[0].startswith(f"kruxos-gateway: policy error: {appliance.policy}: no such file")
    assert "hint: " in lines[0]


def test_a_policy_file_deleted_before_a_reload_keeps_the_old_policy(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    policy = "version: 1\ndefault: allow\nrules:\n  - {name: no-x, decision: deny, inputs: {command: x}}\n"
    appliance = Appliance(tmp_path, daemons, policy=policy)
    daemon = appliance.start()
    appliance.policy.unlink()
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "policy reload refused" in daemon.stderr)
    assert f"{appliance.policy}: no such file" in daemon.stderr
    with KruxOS.connect(appliance.address, api_key=appliance.key) as agent, pytest.raises(PolicyDenied):
        agent.capabilities.invoke("process.run", command="x")


def test_kruxosctl_policy_reload_refuses_a_missing_policy_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    missing = tmp_path / "policy.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\npolicy: {{file: {missing}}}\n")
    for action in ("reload", "show"):
        assert kruxosctl(["--config", str(config), "policy", action]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"{missing}" in err
        assert "no such file" in err or "does not exist" in err


def test_only_a_configuration_that_names_no_policy_file_gets_the_shipped_default(tmp_path: Path) -> None:
    named = PolicyConfig.model_validate({"file": str(tmp_path / "absent.yaml")})
    with pytest.raises(PolicyError, match="no such file"):
        configured_policy(named)
    unnamed = PolicyConfig()
    if Path(unnamed.file).exists():
        pytest.skip(f"{unnamed.file} exists on this host")
    assert configured_policy(unnamed).source.endswith("(missing: shipped default)")


# --- 3. backreferences in merged regex rules ----------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "rule"),
    [
        pytest.param(
            "  - {name: doubled, decision: deny, inputs: {command: {regex: ['(b)\\1', '(a)\\1']}}}\n",
            "doubled",
            id="one-rule-two-patterns",
        ),
        pytest.param(
            "  - {name: bb, decision: deny, inputs: {command: {regex: '(b)\\1'}}}\n"
            "  - {name: aa, decision: deny, inputs: {command: {regex: '(a)\\1'}}}\n",
            "aa",
            id="two-rules-merged",
        ),
        pytest.param(
            "  - {name: q1, decision: deny, inputs: {command: {regex: '(?P<q>x)(?P=q)'}}}\n"
            "  - {name: q2, decision: deny, inputs: {command: {regex: '(?P<q>a)(?P=q)'}}}\n",
            "q2",
            id="named-groups",
        ),
    ],
)
def test_a_backreference_still_matches_when_regex_rules_are_merged(policy: str, rule: str) -> None:
    compiled = parse_policy("version: 1\ndefault: allow\nrules:\n" + policy)
    assert decide(compiled, "process.run", command="echo aa") == ("deny", rule)
    assert decide(compiled, "process.run", command="echo ab") == ("allow", "default")
