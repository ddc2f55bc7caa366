"""The build host's tools: find what is missing and install it with apt (Debian 12 or 13).

Debian 12 needs bookworm-backports for mkosi 24 and the systemd 254 tools it uses; Debian 13 has them in main.
Without root nothing is installed: the error names the one command to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError

BACKPORTS_LIST = Path("/etc/apt/sources.list.d/bookworm-backports.list")
OVMF_CODE = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd")


@dataclass(frozen=True)
class Tool:
    """A command the build needs, the package that ships it, and whether that comes from backports on 12."""

    command: str
    package: str
    backports: bool = False
    only_on: int | None = None  # needed on this Debian version only


MKOSI_MINIMUM = 24
# mkosi builds the image; the rest are the programs mkosi and build.py call. On Debian 13, mkosi's own
# dependencies bring most of them.
BUILD_TOOLS = (
    Tool("mkosi", "mkosi", backports=True),
    Tool("systemd-repart", "systemd", backports=True),  # partitions the disk image (254+ for mkosi 24)
    Tool("bootctl", "systemd-boot", backports=True, only_on=12),  # mkosi 24 installs systemd-boot with it
    Tool("depmod", "kmod", backports=True),
    Tool("mkfs.vfat", "dosfstools"),  # the ESP
    Tool("mcopy", "mtools"),  # systemd-repart fills the ESP with it
    Tool("mkfs.ext4", "e2fsprogs"),  # the root file system
    Tool("cpio", "cpio"),  # the initrd
    Tool("zstd", "zstd"),
    Tool("bmaptool", "bmap-tools"),
    Tool("ssh-keygen", "openssh-client"),  # the dev profile's build key
)
# Python modules the host's /usr/bin/python3 needs: mkosi runs ukify with it to build the UKI.
HOST_PYTHON_MODULES = (("pefile", "python3-pefile"),)
BOOT_TOOLS = (
    Tool("qemu-system-x86_64", "qemu-system-x86"),
    Tool("qemu-img", "qemu-utils"),  # the boot disk: a throw-away overlay, bigger than the image
)


def debian_version() -> int | None:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if fields.get("ID") != "debian":
        return None
    try:
        return int(fields.get("VERSION_ID", "").strip('"'))
    except ValueError:
        return None


def _mkosi_major(mkosi: str) -> int:
    """mkosi's major version (Debian 12's own mkosi is 14: too old, backports has 24)."""
    try:
        out = subprocess.run([mkosi, "--version"], capture_output=True, text=True, check=False).stdout
        return int(out.split()[-1].split(".")[0])
    except (OSError, ValueError, IndexError):
        return 0


def _has_backports() -> bool:
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for path in sources:
        try:
            if "bookworm-backports" in path.read_text():
                return True
        except OSError:
            continue
    return False


def _python_has(module: str) -> bool:
    result = subprocess.run(["/usr/bin/python3", "-c", f"import {module}"], capture_output=True, check=False)
    return result.returncode == 0


def missing_packages(*, boot: bool = True, build: bool = True) -> tuple[list[str], list[str]]:
    """(packages from the main archive, packages from backports) that provide missing tools."""
    tools = (BUILD_TOOLS if build else ()) + (BOOT_TOOLS if boot else ())
    version = debian_version()
    main: list[str] = []
    backports: list[str] = []
    for tool in tools:
        if tool.only_on not in (None, version):
            continue
        found = shutil.which(tool.command, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if found is None or (tool.command == "mkosi" and _mkosi_major(found) < MKOSI_MINIMUM):
            (backports if tool.backports and version == 12 else main).append(tool.package)
    for module, package in HOST_PYTHON_MODULES:
        if build and not _python_has(module):
            main.append(package)
    if boot and not any(Path(p).exists() for p in OVMF_CODE):
        main.append("ovmf")
    if build and version == 12:
        # trixie's archive keys are in bookworm's keyring since 2023.3+deb12u1: keep it current
        main.append("debian-archive-keyring")
    return sorted(set(main)), sorted(set(backports))


def install_command(main: list[str], backports: list[str]) -> str:
    parts = []
    if backports and not _has_backports():
        parts.append(f"echo 'deb http://deb.debian.org/debian bookworm-backports main' > {BACKPORTS_LIST}")
    parts.append("apt-get update")
    if backports:
        parts.append(
            "apt-get install -y --no-install-recommends -t bookworm-backports " + " ".join(backports)
        )
    if main:
        parts.append("apt-get install -y --no-install-recommends " + " ".join(main))
    return " && ".join(parts)


def ensure(*, boot_only: bool = False) -> list[str]:
    """Install what is missing (root) or fail with the command to run. Returns the installed packages.

    The build installs the tools to boot the image too (QEMU, OVMF): ``build.py boot`` and the tests use them.
    """
    if debian_version() not in (12, 13):
        if shutil.which("mkosi") is None:
            raise BuildError(
                "this host is not Debian 12 or 13 and has no mkosi",
                hint="install mkosi (>= 24) and its tools with your distribution's package manager",
            )
        return []
    main, backports = missing_packages(build=not boot_only)
    if main == ["debian-archive-keyring"] and not backports:
        main = []  # nothing is missing; the keyring is refreshed only alongside a real install
    if not main and not backports:
        return []
    command = install_command(main, backports)
    if os.geteuid() != 0:
        raise BuildError("build tools are missing: " + " ".join(main + backports), hint=f"as root: {command}")
    result = subprocess.run(
        ["sh", "-c", command],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"installing build tools failed: {last}", hint=f"run it by hand: {command}")
    return main + backports
