"""A real gateway (``kruxos_gateway``) started for the guide tests, and how samples are run against it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..helpers import timeout

__all__ = ["README", "RunningGateway", "start_gateway", "timeout"]

README = "# Guide workspace\nhello from the guide tests\n"


@dataclass(frozen=True)
class RunningGateway:
    address: str
    key: str
    workspace: Path
    log: Path
    process: subprocess.Popen[bytes]

    def run(self, program: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``program`` with this interpreter, as a user would; no KRUXOS_* variables unless given."""
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("KRUXOS_") and k != "CREDENTIALS_DIRECTORY"
        }
        return subprocess.run(
            [sys.executable, "-c", program],
            env=clean | (env or {}),
            capture_output=True,
            text=True,
            timeout=timeout(60),
            check=False,
        )


def _gateway_cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", *(str(a) for a in args)]


def _shipped_policy() -> Path:
    from kruxos_gateway.policy.rules import DEFAULT_POLICY_RESOURCE

    return Path(importlib.util.find_spec("kruxos_gateway").origin).parent / DEFAULT_POLICY_RESOURCE  # type: ignore[arg-type,union-attr]


@contextmanager
def start_gateway(base: Path, **settings: Any) -> Iterator[RunningGateway]:
    """Run the real gateway (``kruxos_gateway``) on 127.0.0.1, port 0, with a fresh key and workspace.

    ``settings`` adds top-level sections to the gateway configuration (e.g. ``auth={...}``).
    """
    try:
        import kruxos_gateway  # noqa: F401
    except ImportError:
        pytest.skip("the gateway package kruxos_gateway is not installed (pip install -e gateway)")
    # The shipped default policy, named explicitly: a host's own /etc/kruxos/policy.yaml (the
    # configuration's default path) must not decide what the guide's samples may do.
    settings.setdefault("policy", {"file": str(_shipped_policy())})
    # The samples' web APIs are stand-ins served on loopback, which network.http_request refuses
    # unless the operator allows it (docs/gateway.md, network.allow_addresses).
    settings.setdefault("network", {"allow_addresses": ["127.0.0.0/8"]})
    workspace, state, config = base / "workspace", base / "state", base / "gateway.yaml"
    workspace.mkdir()
    (workspace / "README.md").write_text(README)
    config.write_text(  # JSON is YAML
        json.dumps(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "state_dir": str(state),
                "workspace": {"root": str(workspace)},
                **settings,
            }
        )
    )
    created = subprocess.run(
        _gateway_cli("kruxos_gateway.ctl", "--config", config, "keys", "create", "guide"),
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert created.returncode == 0, f"kruxos_gateway.ctl keys create failed: {created.stderr}"
    key = created.stdout.strip()
    port_file, log = base / "port", base / "gateway.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            _gateway_cli("kruxos_gateway", "--config", config, "--port", "0", "--port-file", port_file),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout(30)
        while not port_file.exists():
            assert process.poll() is None, f"the gateway exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the gateway wrote no port file:\n{log.read_text()}"
            time.sleep(0.05)  # polling for the port file, not waiting a fixed time
        port = int(port_file.read_text())
        yield RunningGateway(
            address=f"127.0.0.1:{port}", key=key, workspace=workspace, log=log, process=process
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=timeout(30))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
