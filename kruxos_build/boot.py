"""Booting the built image in QEMU: UEFI (OVMF), a snapshot=on disk, SSH and gateway ports forwarded.

KVM is used only when a quick probe shows it really runs a guest; otherwise TCG (``-accel tcg``) with
the baseline x86-64 CPU (see ``TCG_CPU``).
"""

from __future__ import annotations

import functools
import os
import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError

OVMF_PAIRS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
)
QEMU = "qemu-system-x86_64"
# The CPU emulated under TCG. Debian needs no more than baseline x86-64, and the more a CPU model offers,
# the more glibc, the kernel and Python pick code paths that TCG emulates slowly: measured on the same
# image (bench/image_bench.py), `-cpu max` and `Nehalem` reach /health in 55-62 s, `qemu64` in 43-49 s.
TCG_CPU = "qemu64"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _firmware() -> tuple[str, str]:
    for code, variables in OVMF_PAIRS:
        if Path(code).exists() and Path(variables).exists():
            return code, variables
    raise BuildError("no UEFI firmware for QEMU (OVMF) found", hint="apt-get install ovmf")


#: How long the KVM probe waits for the firmware to print on the serial console.
KVM_PROBE_SECONDS = 10.0


@functools.cache
def kvm_works() -> bool:
    """Whether KVM really runs a guest here: the firmware must print on its serial console.

    ``/dev/kvm`` can exist and still be unable to run an ordinary guest (nested KVM without the
    CPU features QEMU needs): then QEMU either gives up at once ("failed to set MSR") or hangs
    without the firmware ever running. A QEMU still alive after a while is therefore no proof;
    output from the firmware is.
    """
    if not Path("/dev/kvm").exists() or shutil.which(QEMU) is None:
        return False
    code, _ = _firmware()
    probe = subprocess.Popen(
        [
            QEMU,
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-machine",
            "q35",
            "-nodefaults",
            "-display",
            "none",
            "-m",
            "128",
            "-no-reboot",
            "-serial",
            "stdio",
            "-drive",
            f"if=pflash,format=raw,readonly=on,file={code}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert probe.stdout is not None
    try:
        ready, _, _ = select.select([probe.stdout], [], [], KVM_PROBE_SECONDS)
        return bool(ready) and bool(os.read(probe.stdout.fileno(), 64))
    finally:
        probe.kill()
        probe.wait()
        probe.stdout.close()


@dataclass(frozen=True)
class Ports:
    ssh: int
    gateway: int


DISK_SIZE = 4 << 30


def overlay(image: Path, directory: Path, size: int = DISK_SIZE) -> Path:
    """A throw-away qcow2 disk on top of ``image``, ``size`` bytes (at least the image's size).

    The built image is only read; the bigger disk lets the first boot grow the root partition like on a
    real, bigger medium.
    """
    disk = directory / "disk.qcow2"
    size = max(size, image.stat().st_size)
    result = subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(image.resolve()),
            str(disk),
            str(size),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(
            f"cannot create the VM's disk: {result.stderr.strip()}", hint="apt-get install qemu-utils"
        )
    return disk


def command(
    disk: Path, ports: Ports, *, guest_gateway_port: int, variables: Path, serial: str, memory_mb: int = 2048
) -> list[str]:
    """The QEMU command line. ``serial`` is a QEMU chardev spec ("mon:stdio" or "file:PATH")."""
    code, _ = _firmware()
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm_works() else ["-accel", "tcg", "-cpu", TCG_CPU]
    return [
        QEMU,
        "-machine",
        "q35",
        *accel,
        "-smp",
        "2",
        "-m",
        str(memory_mb),
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        serial,
        "-drive",
        f"if=pflash,format=raw,readonly=on,file={code}",
        "-drive",
        f"if=pflash,format=raw,file={variables}",
        # snapshot=on as well: nothing is written back even to the throw-away overlay
        "-drive",
        f"if=virtio,format=qcow2,file={disk},snapshot=on",
        "-netdev",
        (
            f"user,id=net0,hostfwd=tcp:127.0.0.1:{ports.ssh}-:22,"
            f"hostfwd=tcp:127.0.0.1:{ports.gateway}-:{guest_gateway_port}"
        ),
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
    ]


class GuestPanicked(Exception):
    """The guest's kernel panicked while booting, or its console stayed silent (emulator faults)."""


#: What the kernel prints when it panics. Under TCG with two vCPUs, QEMU occasionally breaks the
#: kernel's early code patching (an int3 "Oops" in a timer function, then this, in the first two
#: seconds): an emulator fault, not the image's, which the next boot does not repeat.
PANIC = b"Kernel panic - not syncing"
SILENT_SECONDS = 120.0


def wait_for_ssh(port: int, deadline: float, serial_log: Path | None = None) -> None:
    """Until sshd's banner answers on the forwarded port (QEMU accepts connections before sshd runs).

    With ``serial_log``, a kernel panic on the console ends the wait at once, and so does a console
    still empty after ``SILENT_SECONDS`` (the firmware prints within seconds, even under TCG: a QEMU
    that printed nothing is stuck): both ``GuestPanicked``.
    """
    silent_until = time.monotonic() + SILENT_SECONDS
    while time.monotonic() < deadline:
        if serial_log is not None and serial_log.exists():
            console = serial_log.read_bytes()
            if PANIC in console:
                raise GuestPanicked(f"the guest's kernel panicked; its console is in {serial_log}")
            if not console and time.monotonic() > silent_until:
                raise GuestPanicked(f"nothing on the guest's console in {SILENT_SECONDS:g} s: QEMU is stuck")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.settimeout(5)
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"SSH did not answer on port {port}")


@dataclass
class Vm:
    """A running guest: its ports, serial log and QEMU process."""

    process: subprocess.Popen[bytes]
    ports: Ports
    serial_log: Path
    started: float


@contextmanager
def running(image: Path, *, guest_gateway_port: int, workdir: Path | None = None) -> Iterator[Vm]:
    """Boot ``image`` in the background (serial console to a log file); stop QEMU on exit."""
    if shutil.which(QEMU) is None:
        raise BuildError(f"{QEMU} is not installed", hint="apt-get install qemu-system-x86 ovmf")
    with tempfile.TemporaryDirectory(prefix="kruxos-vm-", dir=workdir) as tmp:
        _, variables_template = _firmware()
        variables = Path(tmp) / "OVMF_VARS.fd"
        shutil.copyfile(variables_template, variables)
        ports = Ports(ssh=free_port(), gateway=free_port())
        serial_log = Path(tmp) / "serial.log"
        cmd = command(
            overlay(image, Path(tmp)),
            ports,
            guest_gateway_port=guest_gateway_port,
            variables=variables,
            serial=f"file:{serial_log}",
        )
        started = time.monotonic()
        with (Path(tmp) / "qemu.log").open("wb") as qemu_log:
            process = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=qemu_log
            )
        try:
            yield Vm(process=process, ports=ports, serial_log=serial_log, started=started)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def interactive(image: Path, *, guest_gateway_port: int) -> int:
    """``build.py boot``: the serial console on this terminal (Ctrl-A X quits)."""
    if shutil.which(QEMU) is None:
        raise BuildError(f"{QEMU} is not installed", hint="apt-get install qemu-system-x86 ovmf")
    with tempfile.TemporaryDirectory(prefix="kruxos-vm-") as tmp:
        _, variables_template = _firmware()
        variables = Path(tmp) / "OVMF_VARS.fd"
        shutil.copyfile(variables_template, variables)
        ports = Ports(ssh=free_port(), gateway=free_port())
        accel = "KVM" if kvm_works() else "TCG (no usable KVM: slower)"
        print(
            f"booting {image} with {accel}; the VM writes to a throw-away {DISK_SIZE >> 30} GiB overlay,"
            " the image is never modified"
        )
        print(
            f"  ssh:     ssh -p {ports.ssh} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            f"root@127.0.0.1"
        )
        print(f"  gateway: http://127.0.0.1:{ports.gateway}/health  (guest port {guest_gateway_port})")
        print("  console: this terminal; quit with Ctrl-A X", flush=True)
        cmd = command(
            overlay(image, Path(tmp)),
            ports,
            guest_gateway_port=guest_gateway_port,
            variables=variables,
            serial="mon:stdio",
        )
        return subprocess.run(cmd, check=False).returncode
