"""Fixtures of the booted-image tests: one image build and one boot per session (see image_support)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from image_support import BOOT_DEADLINE, ROOT, Booted, ssh_config_for, timeout

from kruxos_build import boot, description, outputs
from kruxos_build.paths import DEFAULT_DESCRIPTION, Layout

with warnings.catch_warnings():
    # paramiko (through testinfra) imports cryptography's deprecated ciphers; not ours to fix
    warnings.simplefilter("ignore", DeprecationWarning)
    import testinfra
    import testinfra.host


@pytest.fixture(scope="session")
def appliance() -> description.Description:
    return description.load(DEFAULT_DESCRIPTION)


@pytest.fixture(scope="session")
def image(appliance: description.Description) -> Path:
    """The dev image: $KRUXOS_TEST_IMAGE, or built now with ./build.py (incremental, cached)."""
    if given := os.environ.get("KRUXOS_TEST_IMAGE"):
        return Path(given)
    if os.geteuid() != 0:
        pytest.fail("building the image needs root: run the image tests as root, or set KRUXOS_TEST_IMAGE")
    result = subprocess.run([sys.executable, str(ROOT / "build.py")], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        pytest.fail(f"./build.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return Layout().out / f"{outputs.stem(appliance)}.raw"


@pytest.fixture(scope="session")
def booted(image: Path, appliance: description.Description,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    with boot.running(image, guest_gateway_port=appliance.gateway.port) as vm:
        try:
            boot.wait_for_ssh(vm.ports.ssh, vm.started + BOOT_DEADLINE)
        except TimeoutError:
            console = vm.serial_log.read_text(errors="replace")[-4000:]
            pytest.fail(f"no SSH within {BOOT_DEADLINE:.0f}s; serial console ends:\n{console}")
        yield Booted(vm=vm, ssh_config=ssh_config_for(vm, tmp_path_factory.mktemp("ssh")),
                     gateway_port=appliance.gateway.port, ssh_seconds=time.monotonic() - vm.started)


@pytest.fixture(scope="session")
def host(booted: Booted) -> testinfra.host.Host:
    """The guest as a testinfra host (paramiko over the forwarded SSH port), once boot has settled."""
    h = testinfra.get_host("paramiko://root@127.0.0.1", ssh_config=str(booted.ssh_config),
                           ssh_identity_file=str(Layout().ssh_key), timeout=int(timeout(30)))
    # degraded or running: either way boot is over; the tests say which one it should be
    h.run(f"timeout {timeout(180):.0f} systemctl is-system-running --wait")
    return h
