"""mkosi's workspace (``WorkspaceDirectory=``): in memory when the machine has room for a build, else on disk.

A build writes the image tree and the disk image into mkosi's workspace and deletes both at the end:
about a gigabyte at its peak, every build. In mkosi's default workspace (``/var/tmp``, on disk) the
host's file system allocates, journals and writes back every byte of it, although none of it outlives
the build. On the reference machine (2 cores, virtio disk) that made up most of a rebuild after an
SDK-only change: populating the root file system took 7.3 s on disk and 0.3 s in memory, copying the
cached Debian tree 6.1 s and 0.8 s; the whole build went from 23 s to 13 s, a clean build from 83 s to
64 s. What the build keeps (mkosi's cache, the outputs) is still written to disk.

So the workspace goes to ``/dev/shm`` when that is a memory file system the build can run programs
from, with :data:`NEEDED` free in it and as much memory available; otherwise mkosi's default stays.
``KRUXOS_BUILD_WORKSPACE`` names a directory to use instead (``/var/tmp`` keeps the build on disk).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError

ENV = "KRUXOS_BUILD_WORKSPACE"
MEMORY_PARENT = Path("/dev/shm")
MEMORY_WORKSPACE = MEMORY_PARENT / "kruxos-build"
GIB = 1 << 30
# A clean build's workspace peaked at 1.0 GB (image tree plus disk image); the margin covers extra
# packages from the appliance description and the programs running beside the build.
NEEDED = 3 * GIB
MEMORY_FILE_SYSTEMS = ("tmpfs", "ramfs")


@dataclass(frozen=True)
class Workspace:
    """The directory for mkosi's workspace (``None``: mkosi's default, ``/var/tmp``) and why."""

    path: Path | None
    reason: str

    @property
    def in_memory(self) -> bool:
        return self.path is not None and self.path.is_relative_to(MEMORY_PARENT)

    def describe(self) -> str:
        return f"{self.path or '/var/tmp (on disk)'}: {self.reason}"


MKOSI_DEFAULT = Workspace(None, "mkosi's default")


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo``, as far as the choice needs it."""

    point: Path
    fstype: str
    options: frozenset[str]


def mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Mount]:
    found = []
    for line in mountinfo.read_text().splitlines():
        # "36 35 98:0 / /mnt rw,noatime master:1 - ext3 /dev/root rw,errors=continue": the mount
        # options come sixth, the file system type after the "-" separator.
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        point = fields[4].replace("\\040", " ")
        found.append(Mount(Path(point), fields[separator + 1], frozenset(fields[5].split(","))))
    return found


def memory_available(meminfo: Path = Path("/proc/meminfo")) -> int:
    """``MemAvailable`` in bytes: what the kernel can hand out without swapping (0 when unknown)."""
    for line in meminfo.read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            return int(value.split()[0]) * 1024
    return 0


def free_space(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def choose(
    environ: Mapping[str, str] = os.environ,
    *,
    list_mounts: Callable[[], list[Mount]] = mounts,
    available: Callable[[], int] = memory_available,
    free: Callable[[Path], int] = free_space,
) -> Workspace:
    """The workspace for this build; the keyword arguments are the host's facts, for the tests."""
    if chosen := environ.get(ENV):
        path = Path(chosen)
        if not path.is_absolute():
            raise BuildError(f"{ENV}={chosen} is not an absolute path", hint=f"for example {ENV}=/var/tmp")
        return Workspace(path, f"set by {ENV}")
    mount = next((m for m in list_mounts() if m.point == MEMORY_PARENT), None)
    if mount is None or mount.fstype not in MEMORY_FILE_SYSTEMS:
        return Workspace(None, f"{MEMORY_PARENT} is not a memory file system")
    if "noexec" in mount.options:
        # The image's own programs run from the workspace (mkosi-chroot scripts, depmod, systemd-hwdb).
        return Workspace(None, f"{MEMORY_PARENT} is mounted noexec")
    room = min(free(MEMORY_PARENT), available())
    if room < NEEDED:
        return Workspace(
            None, f"{room / GIB:.1f} GiB of memory free, a build in memory wants {NEEDED // GIB} GiB"
        )
    return Workspace(MEMORY_WORKSPACE, f"in memory ({room / GIB:.0f} GiB free)")


def prepare(workspace: Workspace) -> None:
    """Create the workspace directory: root's alone, like ``/var/tmp``'s build directories."""
    if workspace.path is None:
        return
    try:
        workspace.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(
            f"cannot use {workspace.path} as mkosi's workspace: {exc.strerror}",
            hint=f"name a writable directory in {ENV}, or unset it",
        ) from None
