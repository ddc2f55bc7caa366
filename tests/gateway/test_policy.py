"""The policy engine: how rules match, which decision wins, the shipped default's intent, broken files."""

from __future__ import annotations

from typing import Any

import pytest
from kruxos_gateway.capabilities.builtin import default_registry
from kruxos_gateway.core.models import CapabilityDefinition
from kruxos_gateway.policy.rules import Policy, PolicyError, parse_policy, shipped_default_text

REGISTRY = default_registry()


def definition(name: str) -> CapabilityDefinition:
    return REGISTRY.get(name).definition


def decide(policy: Policy, capability: str, key: str = "alice", **inputs: Any) -> tuple[str, str]:
    decision = policy.decide(key, definition(capability), inputs)
    return decision.decision, decision.rule


TABLE = parse_policy(
    """
version: 1
default: deny
groups:
  ops: [bob, "ci-*"]
rules:
  - {name: reads, decision: allow, tier: read}
  - {name: fs-category, decision: allow, category: filesystem}
  - {name: safe-tag, decision: allow, tags: [safe]}
  - {name: ls-glob, decision: allow, capability: process.run, inputs: {command: "ls *"}}
  - {name: kubectl-regex, decision: require_approval, capability: process.run,
     inputs: {command: {regex: '\\bkubectl\\b'}}}
  - {name: ops-may-deploy, decision: allow, capability: process.run, groups: [ops],
     inputs: {command: {regex: '\\bkubectl\\b'}}}
  - {name: carol-runs, decision: allow, capability: "process.*", keys: [carol]}
  - {name: no-etc, decision: deny, capability: process.run, inputs: {cwd: {under: /workspace/secret}}}
  - {name: good-host, decision: allow, capability: network.http_request,
     inputs: {url: {host: ["*.example.org"]}}}
  - {name: not-on-friday, decision: require_approval, capability: network.http_request,
     unless: {inputs: {method: [GET, HEAD]}}}
""",
    "table.yaml",
)


@pytest.mark.parametrize(
    ("capability", "key", "inputs", "expected"),
    [
        pytest.param("filesystem.read", "alice", {"path": "a"}, ("allow", "reads"), id="tier"),
        pytest.param("filesystem.write", "alice", {"path": "a"}, ("allow", "fs-category"), id="category"),
        pytest.param("process.run", "alice", {"command": "ls -la"}, ("allow", "ls-glob"), id="input-glob"),
        pytest.param("process.run", "alice", {"command": "lsblk"}, ("deny", "default"), id="glob-is-whole"),
        pytest.param(
            "process.run",
            "alice",
            {"command": "ls; kubectl apply"},
            ("require_approval", "kubectl-regex"),
            id="approval-beats-allow",
        ),
        pytest.param(
            "process.run",
            "bob",
            {"command": "kubectl apply"},
            ("require_approval", "kubectl-regex"),
            id="group-allow-does-not-undo-approval",
        ),
        pytest.param("process.run", "carol", {"command": "make"}, ("allow", "carol-runs"), id="key-glob"),
        pytest.param("process.run", "dave", {"command": "make"}, ("deny", "default"), id="other-key-default"),
        pytest.param(
            "process.run",
            "carol",
            {"command": "make", "cwd": "/workspace/secret/x"},
            ("deny", "no-etc"),
            id="deny-beats-allow",
        ),
        pytest.param(
            "process.run",
            "carol",
            {"command": "make", "cwd": "secret/../secret"},
            ("deny", "no-etc"),
            id="under-normalises-relative-paths",
        ),
        pytest.param(
            "process.run",
            "carol",
            {"command": "make", "cwd": "/workspace/secrets"},
            ("allow", "carol-runs"),
            id="under-is-per-component",
        ),
        pytest.param(
            "process.run",
            "carol",
            {"command": ["kubectl", "get", "pods"]},
            ("require_approval", "kubectl-regex"),
            id="argv-list-joined",
        ),
        pytest.param(
            "network.http_request",
            "alice",
            {"url": "https://API.Example.org/x", "method": "GET"},
            ("allow", "good-host"),
            id="host-glob-case-insensitive",
        ),
        pytest.param(
            "network.http_request",
            "alice",
            {"url": "https://example.org.evil.net/", "method": "GET"},
            ("deny", "default"),
            id="host-is-the-host-not-a-substring",
        ),
        pytest.param(
            "network.http_request",
            "alice",
            {"url": "https://a.example.org/", "method": "POST"},
            ("require_approval", "not-on-friday"),
            id="unless",
        ),
        pytest.param("alerts.send", "alice", {}, ("deny", "default"), id="unmatched-gets-default"),
    ],
)
def test_rule_matching(capability: str, key: str, inputs: dict[str, Any], expected: tuple[str, str]) -> None:
    assert decide(TABLE, capability, key, **inputs) == expected


def test_the_first_rule_in_the_file_reports_among_equally_strict_matches() -> None:
    assert decide(TABLE, "filesystem.read", path="a") == ("allow", "reads")  # also fs-category


DEFAULT = parse_policy(shipped_default_text(), "default-policy.yaml")


@pytest.mark.parametrize(
    ("capability", "inputs", "expected"),
    [
        pytest.param("filesystem.read", {"path": "/workspace/README.md"}, "allow", id="workspace-read"),
        pytest.param("filesystem.write", {"path": "notes.txt"}, "allow", id="workspace-write"),
        pytest.param("alerts.send", {"severity": "info"}, "allow", id="alert-the-operator"),
        pytest.param("process.run", {"command": "ls -la /workspace"}, "allow", id="guide-ls"),
        pytest.param("process.run", {"command": ["id", "-un"]}, "allow", id="argv-id"),
        pytest.param(
            "process.run", {"command": "rm -rf build /workspace/tmp"}, "allow", id="rm-in-workspace"
        ),
        pytest.param("process.run", {"command": "cat deploy.yaml"}, "allow", id="reading-a-deploy-file"),
        pytest.param("process.run", {"command": "pip list"}, "allow", id="listing-packages"),
        pytest.param(
            "process.run", {"command": "kubectl apply -f deploy.yaml"}, "require_approval", id="guide-kubectl"
        ),
        pytest.param("process.run", {"command": "deploy.sh"}, "require_approval", id="guide-deploy-sh"),
        pytest.param("process.run", {"command": "bash scripts/release.sh"}, "require_approval", id="release"),
        pytest.param("process.run", {"command": "terraform apply"}, "require_approval", id="terraform"),
        pytest.param("process.run", {"command": "helm upgrade x"}, "require_approval", id="helm"),
        pytest.param("process.run", {"command": "apt-get install -y jq"}, "require_approval", id="apt"),
        pytest.param("process.run", {"command": "pip install requests"}, "require_approval", id="pip"),
        pytest.param("process.run", {"command": "npm i left-pad"}, "require_approval", id="npm"),
        pytest.param("process.run", {"command": "rm -rf /var/lib"}, "require_approval", id="rm-rf-outside"),
        pytest.param("process.run", {"command": "rm -r -f ~/x"}, "require_approval", id="rm-home"),
        pytest.param("process.run", {"command": "rm -rf ../other"}, "require_approval", id="rm-parent"),
        pytest.param("process.run", {"command": "git push origin main"}, "require_approval", id="git-push"),
        pytest.param("process.run", {"command": "curl https://x.test"}, "require_approval", id="curl"),
        pytest.param("process.run", {"command": "systemctl stop kruxos"}, "require_approval", id="systemctl"),
        pytest.param("process.run", {"command": "sudo rm x"}, "deny", id="sudo"),
        pytest.param("process.run", {"command": "ls && su -"}, "deny", id="su"),
        pytest.param(
            "network.http_request",
            {"url": "https://pypi.org/simple/", "method": "GET"},
            "allow",
            id="known-host",
        ),
        pytest.param(
            "network.http_request",
            {"url": "https://pypi.org/upload", "method": "POST"},
            "require_approval",
            id="sending-data",
        ),
        pytest.param(
            "network.http_request",
            {"url": "https://unknown.test/", "method": "GET"},
            "require_approval",
            id="unknown-host",
        ),
    ],
)
def test_the_shipped_default_policy(capability: str, inputs: dict[str, Any], expected: str) -> None:
    assert decide(DEFAULT, capability, **inputs)[0] == expected


def test_the_shipped_default_sends_unknown_capabilities_to_a_person() -> None:
    assert DEFAULT.default == "require_approval"


RULE_A = "default: deny\nrules:\n  - name: a\n    decision: allow\n"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        pytest.param("version: 1\nrules: []\n", 1, "missing 'default'", id="no-default"),
        pytest.param(
            "version: 1\ndefault: maybe\n",
            2,
            "default must be allow, deny or require_approval",
            id="bad-default",
        ),
        pytest.param("version: 2\ndefault: deny\n", 1, "version must be 1", id="version"),
        pytest.param("default: deny\ncolour: red\n", 2, "unknown key 'colour'", id="unknown-top-key"),
        pytest.param(
            "default: deny\nrules:\n  - name: a\n    decision: allow\n  - name: b\n    decision: alow\n",
            6,
            "rule 'b': decision must be allow",
            id="bad-decision",
        ),
        pytest.param(
            "default: deny\nrules:\n  - name: a\n    decision: allow\n  - name: a\n    decision: deny\n",
            5,
            "duplicate rule name 'a' (first at line 3)",
            id="duplicate-name",
        ),
        pytest.param(
            "default: deny\nrules:\n  - decision: allow\n", 3, "every rule needs a 'name'", id="no-name"
        ),
        pytest.param(
            "default: deny\nrules:\n  - name: a\n    decision: allow\n    capabilty: x\n",
            5,
            "unknown key 'capabilty'",
            id="typo-in-rule",
        ),
        pytest.param(
            RULE_A + "    inputs:\n      command: {regex: '('}\n",
            6,
            "invalid regex '('",
            id="bad-regex",
        ),
        pytest.param(
            "default: deny\nrules:\n  - name: a\n    decision: allow\n    groups: [ops]\n",
            5,
            "unknown group 'ops'",
            id="unknown-group",
        ),
        pytest.param(
            RULE_A + "    inputs:\n      path: {prefix: /x}\n",
            6,
            "unknown matcher 'prefix'",
            id="unknown-matcher",
        ),
        pytest.param("default: deny\ndefault: allow\n", 2, "duplicate key 'default'", id="duplicate-key"),
        pytest.param("default: deny\nrules: [\n", 3, "not valid YAML", id="not-yaml"),
    ],
)
def test_a_broken_policy_is_refused_with_the_line_and_the_reason(text: str, line: int, reason: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "/etc/kruxos/policy.yaml")
    assert caught.value.line == line
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"/etc/kruxos/policy.yaml, line {line}: ")


MERGED = parse_policy(
    """
version: 1
default: allow
rules:
  - {name: first, decision: deny, capability: filesystem.read, inputs: {path: {under: /workspace/a}}}
  - {name: second, decision: deny, capability: filesystem.read, inputs: {path: {under: /workspace/b}}}
  - {name: third, decision: deny, capability: filesystem.read, inputs: {path: {under: [/workspace/b/c, /x]}}}
  - {name: words, decision: deny, capability: filesystem.read, inputs: {path: {regex: secret}}}
""",
    "merged.yaml",
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/workspace/a/f", ("deny", "first"), id="first-of-a-merged-group"),
        pytest.param("b/c/f", ("deny", "second"), id="first-in-file-order-wins-inside-a-group"),
        pytest.param("/x", ("deny", "third"), id="last-of-a-merged-group"),
        pytest.param("/workspace/secret", ("deny", "words"), id="after-the-group"),
        pytest.param("/workspace/ab", ("allow", "default"), id="no-member-matches"),
    ],
)
def test_rules_merged_for_speed_still_name_the_deciding_rule(path: str, expected: tuple[str, str]) -> None:
    assert decide(MERGED, "filesystem.read", path=path) == expected


def test_regexes_with_global_flags_work_alone_and_merged() -> None:
    policy = parse_policy(
        "version: 1\ndefault: allow\nrules:\n"
        "  - {name: a, decision: deny, capability: process.run,\n"
        "     inputs: {command: {regex: '(?i)^KUBECTL'}}}\n"
        "  - {name: b, decision: deny, capability: process.run,\n"
        "     inputs: {command: {regex: ['(?i)helm', x]}}}\n",
        "flags.yaml",
    )
    assert decide(policy, "process.run", command="kubectl get pods") == ("deny", "a")
    assert decide(policy, "process.run", command="HELM list") == ("deny", "b")
    assert decide(policy, "process.run", command="ls") == ("allow", "default")
