"""An acknowledged persistent write survives the gateway being killed (SIGKILL) right after it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kruxos import ConnectionClosed, GatewayConnectionError, KruxOS

from .support import timeout


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", *(str(a) for a in args)]


@contextmanager
def gateway_process(base: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The real gateway as a subprocess on 127.0.0.1, port 0; yields (address, process)."""
    config = base / "gateway.yaml"
    port_file = base / "port"
    port_file.unlink(missing_ok=True)
    with (base / "gateway.log").open("a") as log:
        process = subprocess.Popen(
            _cli("kruxos_gateway", "--config", config, "--port", "0", "--port-file", port_file),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout(30)
        while not port_file.exists():
            assert process.poll() is None, (base / "gateway.log").read_text()
            assert time.monotonic() < deadline, "the gateway wrote no port file"
            time.sleep(0.02)  # polling for the port file, not waiting a fixed time
        yield f"127.0.0.1:{int(port_file.read_text())}", process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def setup_gateway(base: Path) -> str:
    (base / "workspace").mkdir()
    (base / "gateway.yaml").write_text(
        json.dumps(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "state_dir": str(base / "state"),
                "workspace": {"root": str(base / "workspace")},
            }
        )
    )
    created = subprocess.run(
        _cli("kruxos_gateway.ctl", "--config", base / "gateway.yaml", "keys", "create", "writer"),
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=True,
    )
    return created.stdout.strip()


@pytest.mark.asyncio
async def test_every_acknowledged_persistent_write_survives_sigkill(tmp_path: Path) -> None:
    key = setup_gateway(tmp_path)
    acknowledged: dict[tuple[str, int], int] = {}
    with gateway_process(tmp_path) as (address, process):

        async def writer(n: int) -> None:
            async with KruxOS.connect_async(address, api_key=key) as agent:
                for value in range(10_000):
                    version = await agent.state.persistent.set(f"stream.{n}", value)
                    acknowledged[(f"stream.{n}", version)] = value

        writers = [asyncio.create_task(writer(n)) for n in range(8)]
        deadline = time.monotonic() + timeout(30)
        while len(acknowledged) < 300:  # kill it mid-stream, with writes in flight
            assert time.monotonic() < deadline, f"only {len(acknowledged)} writes acknowledged"
            await asyncio.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        results = await asyncio.gather(*writers, return_exceptions=True)
    assert all(isinstance(r, ConnectionClosed | GatewayConnectionError) for r in results), results
    killed_at = dict(acknowledged)

    with gateway_process(tmp_path) as (address, _):
        async with KruxOS.connect_async(address, api_key=key) as agent:
            for (name, version), value in sorted(killed_at.items()):
                entry = await agent.state.persistent.get(name, version=version)
                assert (entry.found, entry.value) == (True, value), (name, version)
