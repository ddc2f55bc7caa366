"""Booting the image under QEMU: what the waiting side makes of the guest's console."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kruxos_build import boot


def test_a_kernel_panic_on_the_console_ends_the_wait_for_ssh_at_once(tmp_path: Path) -> None:
    console = tmp_path / "serial.log"
    console.write_bytes(b"[    1.61] Oops: int3\n[    1.61] Kernel panic - not syncing: Fatal exception\n")
    started = time.monotonic()
    with pytest.raises(boot.GuestPanicked, match="kernel panicked"):
        boot.wait_for_ssh(boot.free_port(), started + 30, console)
    assert time.monotonic() - started < 5


def test_without_a_panic_the_wait_for_ssh_runs_to_its_deadline(tmp_path: Path) -> None:
    console = tmp_path / "serial.log"
    console.write_bytes(b"[    1.61] pnp: PnP ACPI: found 5 devices\n")
    with pytest.raises(TimeoutError, match="SSH did not answer"):
        boot.wait_for_ssh(boot.free_port(), time.monotonic() + 1.5, console)


def test_a_console_that_stays_silent_ends_the_wait_for_ssh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(boot, "SILENT_SECONDS", 0.5)
    console = tmp_path / "serial.log"
    console.write_bytes(b"")
    with pytest.raises(boot.GuestPanicked, match="nothing on the guest's console"):
        boot.wait_for_ssh(boot.free_port(), time.monotonic() + 30, console)
