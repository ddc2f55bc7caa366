"""A hostile agent against process.run: what its commands can learn of, and leave behind on, the host.

Each command gets a cgroup of its own where the gateway has a delegated cgroup subtree (the
appliance; here a cgroup made for the test), so nothing it starts outlives it; each key's commands
can run as a uid of their own (process.key_uid_base), so one agent's processes are out of another's
reach.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from pathlib import Path

import pytest
from kruxos_gateway.capabilities._cgroups import CommandCgroups, Limits
from kruxos_gateway.capabilities.process import resolve_cgroups, resolve_run_as

from .support import eventually, make_config, running_gateway


def alive(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True, check=False).returncode == 0


@pytest.mark.asyncio
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


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("seconds", "tail"),
    [
        pytest.param(10, "", id="after-the-command-ends"),
        pytest.param(1, "; sleep 30", id="after-a-timeout"),
    ],
)
async def test_a_daemon_that_left_the_process_group_does_not_outlive_its_command(
    tmp_path: Path, cgroup_root: Path, seconds: float, tail: str
) -> None:
    marker = f"{3000 + secrets.randbelow(5000)}.{secrets.randbelow(10**6)}"
    config = make_config(tmp_path, process={"cgroup_root": str(cgroup_root)})
    daemonise = f"setsid sh -c 'sleep {marker}' </dev/null >/dev/null 2>&1 & sleep 0.2{tail}"
    async with running_gateway(config, cgroups=resolve_cgroups(config.process)) as gw, gw.client() as client:
        data = await client.data("process.run", command=daemonise, timeout=seconds)
        assert data["timed_out"] is bool(tail)
        await eventually(lambda: not alive(f"sleep {marker}"))
    assert command_cgroups(cgroup_root) == []


def command_cgroups(root: Path) -> list[Path]:
    return list(root.glob("cmd-*"))


@pytest.mark.asyncio
async def test_a_fork_right_at_the_start_still_lands_in_the_commands_cgroup(
    tmp_path: Path, cgroup_root: Path
) -> None:
    config = make_config(tmp_path, process={"cgroup_root": str(cgroup_root)})
    async with running_gateway(config, cgroups=resolve_cgroups(config.process)) as gw, gw.client() as client:
        data = await client.data("process.run", command="cat /proc/self/cgroup")
    assert f"{cgroup_root.name}/cmd-" in data["stdout"], data["stdout"]


@pytest.mark.parametrize("name", ["cmd-leftover", "fs-leftover"], ids=["command", "file-worker"])
def test_commands_left_by_a_gateway_that_stopped_are_killed_at_the_next_start(
    tmp_path: Path, cgroup_root: Path, name: str
) -> None:
    leftover = cgroup_root / name
    leftover.mkdir()
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        (leftover / "cgroup.procs").write_text(str(orphan.pid))
        config = make_config(tmp_path, process={"cgroup_root": str(cgroup_root)})
        assert resolve_cgroups(config.process) is not None
        assert orphan.wait(timeout=5) == -9
        assert not leftover.exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_a_cgroup_root_the_gateway_cannot_use_is_a_one_line_config_error(tmp_path: Path) -> None:
    config = make_config(tmp_path, process={"cgroup_root": str(tmp_path)})
    with pytest.raises(Exception, match=r"^process.cgroup_root: .* is not a cgroup the gateway may"):
        resolve_cgroups(config.process)


def test_limits_are_written_to_the_commands_cgroup(cgroup_root: Path) -> None:
    cgroups = CommandCgroups(cgroup_root, Limits(memory_bytes=64 << 20, tasks=32, cpus=0.5))
    path = cgroups.create()
    try:
        for name, expected in (
            ("memory.max", str(64 << 20)),
            ("pids.max", "32"),
            ("cpu.max", "50000 100000"),
        ):
            if (path / name).exists():  # only where the controller is delegated
                assert (path / name).read_text().strip() == expected
    finally:
        assert cgroups.try_remove(path)


@pytest.mark.asyncio
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
async def test_one_agents_commands_cannot_read_or_kill_anothers(shared_tmp: Path) -> None:
    config = make_config(
        shared_tmp,
        process={"run_as_user": "nobody", "run_as_group": "nogroup", "key_uid_base": 200_000},
    )
    (shared_tmp / "workspace").chmod(0o2777)
    async with running_gateway(config, run_as=resolve_run_as(config.process)) as gw:
        bob_key = await gw.create_key("bob")
        async with gw.client() as alice, gw.client() as alice_again, gw.client(bob_key) as bob:
            secret_run = asyncio.ensure_future(
                alice.data(
                    "process.run",
                    command="echo $$ > alice.pid; exec sleep 8",
                    env={"ALICE_TOKEN": "s3cret-token"},
                    timeout=8,
                )
            )
            await eventually(lambda: pid_written(gw.workspace / "alice.pid"))
            pid = (gw.workspace / "alice.pid").read_text().strip()
            spy = await bob.data("process.run", command=f"cat /proc/{pid}/environ; kill {pid}; id -u")
            alice_uid = (await alice_again.data("process.run", command="id -u"))["stdout"].strip()
            assert "s3cret-token" not in spy["stdout"]
            assert spy["stdout"].split()[-1] != alice_uid
            assert int(alice_uid) >= 200_000
            await asyncio.sleep(0.2)
            assert not secret_run.done(), "bob's command killed alice's"
            secret_run.cancel()


def pid_written(path: Path) -> bool:
    return path.exists() and path.read_text().strip() != ""
