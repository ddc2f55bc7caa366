"""A hostile agent against process.run: what its commands can learn of the gateway that runs them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .support import make_config, running_gateway

pytestmark = pytest.mark.asyncio


async def test_a_command_sees_none_of_the_gateways_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"/opt/gateway-venv/bin:{os.environ.get('PATH', '')}")
    monkeypatch.setenv("KRUXOS_GATEWAY_SECRET_HINT", "the gateway's own variable")
    async with running_gateway(make_config(tmp_path)) as gw, gw.client() as client:
        data = await client.data("process.run", command=["env"])
    seen = dict(line.split("=", 1) for line in data["stdout"].splitlines() if "=" in line)
    assert "KRUXOS_GATEWAY_SECRET_HINT" not in seen
    assert "/opt/gateway-venv/bin" not in seen["PATH"]
    assert set(seen) <= {"PATH", "LANG", "HOME", "PWD", "SHLVL", "_"}
