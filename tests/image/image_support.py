"""Shared pieces of the booted-image tests (a uniquely named module: both test folders have a conftest).

Booted-image tests: build the image once per session (reusing mkosi's cache), boot it once in QEMU.

The image comes from ``./build.py`` (dev profile; cached rebuilds take about a minute), or from
$KRUXOS_TEST_IMAGE to test an image built earlier. QEMU boots it on a throw-away overlay (snapshot=on),
with SSH and the gateway port forwarded to free ports on 127.0.0.1. Deadlines scale with
$KRUXOS_TEST_TIMEOUT_FACTOR (default 1; TCG without KVM is what they are sized for).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kruxos_build import boot
from kruxos_build.paths import Layout

from ..helpers import ROOT, TIMEOUT_FACTOR, timeout

__all__ = ["BOOT_DEADLINE", "ROOT", "Booted", "Host", "ssh_config_for", "timeout"]

Host = Any  # testinfra.host.Host: testinfra ships no type information

BOOT_DEADLINE = 600 * TIMEOUT_FACTOR  # QEMU start -> sshd answering (TCG: 60 s idle, 3+ min on a busy host)


@dataclass(frozen=True)
class Booted:
    """A booted guest and how to reach it."""

    vm: boot.Vm
    ssh_config: Path
    gateway_port: int  # inside the guest
    ssh_seconds: float  # QEMU start -> SSH banner


def ssh_config_for(vm: boot.Vm, directory: Path) -> Path:
    """An ssh_config for ``vm`` (the dev key, no host key checking: every boot has new host keys)."""
    path = directory / f"ssh_config-{vm.ports.ssh}"
    path.write_text(
        f"Host 127.0.0.1\n"
        f"  Port {vm.ports.ssh}\n"
        f"  User root\n"
        f"  IdentityFile {Layout().ssh_key}\n"
        f"  StrictHostKeyChecking no\n"
        f"  UserKnownHostsFile /dev/null\n"
    )
    return path
