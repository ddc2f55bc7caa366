"""mkosi's workspace: in memory when the host has room for a build there, on disk otherwise, or where the
operator says."""

from __future__ import annotations

from pathlib import Path

import pytest

from kruxos_build import build_workspace
from kruxos_build.build_workspace import GIB, Mount, Workspace
from kruxos_build.errors import BuildError

SHM = Path("/dev/shm")


def choose(
    *,
    fstype: str = "tmpfs",
    options: str = "rw,nosuid,nodev",
    free: int = 12 * GIB,
    available: int = 20 * GIB,
    environ: dict[str, str] | None = None,
) -> Workspace:
    """The choice on a host whose /dev/shm and memory are as given."""
    return build_workspace.choose(
        environ or {},
        list_mounts=lambda: [
            Mount(Path("/"), "ext4", frozenset({"rw"})),
            Mount(SHM, fstype, frozenset(options.split(","))),
        ],
        available=lambda: available,
        free=lambda path: free,
    )


def test_a_host_with_room_builds_in_memory() -> None:
    chosen = choose()
    assert chosen.path == SHM / "kruxos-build"
    assert chosen.in_memory
    assert chosen.describe() == "/dev/shm/kruxos-build: in memory (12 GiB free)"


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ({"free": 2 * GIB}, "2.0 GiB of memory free, a build in memory wants 3 GiB"),
        ({"available": GIB}, "1.0 GiB of memory free, a build in memory wants 3 GiB"),
        ({"fstype": "ext4"}, "/dev/shm is not a memory file system"),
        ({"options": "rw,nosuid,nodev,noexec"}, "/dev/shm is mounted noexec"),
    ],
)
def test_otherwise_the_build_stays_on_disk_and_says_why(host: dict[str, object], reason: str) -> None:
    chosen = choose(**host)  # type: ignore[arg-type]
    assert chosen.path is None
    assert not chosen.in_memory
    assert chosen.describe() == f"/var/tmp (on disk): {reason}"


def test_a_host_without_a_dev_shm_mount_builds_on_disk() -> None:
    plenty = 20 * GIB
    chosen = build_workspace.choose({}, list_mounts=list, available=lambda: plenty, free=lambda path: plenty)
    assert chosen.path is None


def test_the_operator_can_name_the_workspace() -> None:
    chosen = choose(environ={"KRUXOS_BUILD_WORKSPACE": "/var/tmp"})
    assert chosen.path == Path("/var/tmp")
    assert not chosen.in_memory
    assert chosen.describe() == "/var/tmp: set by KRUXOS_BUILD_WORKSPACE"


def test_a_relative_workspace_is_refused_with_an_example() -> None:
    with pytest.raises(BuildError) as caught:
        choose(environ={"KRUXOS_BUILD_WORKSPACE": "tmp"})
    assert caught.value.message == "KRUXOS_BUILD_WORKSPACE=tmp is not an absolute path"
    assert caught.value.hint == "for example KRUXOS_BUILD_WORKSPACE=/var/tmp"


def test_mountinfo_is_read_for_the_mount_point_type_and_options(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "25 22 0:21 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,size=12g\n"
        "30 22 0:40 / /mnt/with\\040space rw - vfat /dev/sdb1 rw\n"
    )
    assert build_workspace.mounts(mountinfo) == [
        Mount(Path("/"), "ext4", frozenset({"rw", "relatime"})),
        Mount(Path("/dev/shm"), "tmpfs", frozenset({"rw", "nosuid", "nodev"})),
        Mount(Path("/mnt/with space"), "vfat", frozenset({"rw"})),
    ]


def test_memory_available_comes_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   8388608 kB\n")
    assert build_workspace.memory_available(meminfo) == 8 * GIB


def test_the_real_host_gets_an_answer() -> None:
    """Whatever this machine is, the choice reads its facts without failing."""
    chosen = build_workspace.choose({})
    assert chosen.reason


def test_a_workspace_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(BuildError) as caught:
        build_workspace.prepare(Workspace(blocker / "workspace", "set by KRUXOS_BUILD_WORKSPACE"))
    assert caught.value.message == f"cannot use {blocker / 'workspace'} as mkosi's workspace: Not a directory"
    assert caught.value.hint == "name a writable directory in KRUXOS_BUILD_WORKSPACE, or unset it"
