"""A hostile agent against the file workers: with per-key uids, each key's filesystem.* work runs in
a process of that key's uid, which its own commands can reach (signals) and the gateway trusts in
nothing it sends.

The descriptor walk beneath the workspace is the first layer; the worker's credentials are the
second: a test below turns the walk off inside the worker and the kernel still refuses the
gateway's state to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kruxos import AsyncAgent, CapabilityError, transaction
from kruxos_gateway import compose
from kruxos_gateway.capabilities import _fs_client, _fs_ops, _fs_wire, fs_worker
from kruxos_gateway.capabilities._fs_client import FileWorkers
from kruxos_gateway.capabilities.process import resolve_cgroups, resolve_run_as
from kruxos_gateway.capabilities.workspace import Workspace
from kruxos_gateway.policy.rules import parse_policy
from kruxos_gateway.storage import store
from kruxos_gateway.storage.db import Database

from .state_support import agent
from .support import Client, RunningGateway, eventually, make_config, running_gateway, timeout

BASE = 300_000
GROUP = "nogroup"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


@contextlib.asynccontextmanager
async def gateway_with_key_uids(
    root: Path, cgroup_root: Path | None = None, **filesystem: Any
) -> AsyncIterator[RunningGateway]:
    """A gateway whose keys run as uids of their own in the group nogroup, workspace ``2770``
    root:nogroup as on the appliance, state ``0700`` root's; its workers stopped at the end."""
    process = {"run_as_user": "nobody", "run_as_group": GROUP, "key_uid_base": BASE}
    if cgroup_root is not None:
        process["cgroup_root"] = str(cgroup_root)
    config = make_config(root, process=process, filesystem=filesystem)
    os.chown(config.workspace.root, 0, grp.getgrnam(GROUP).gr_gid)
    config.workspace.root.chmod(0o2770)
    config.state_dir.chmod(0o700)
    umask = os.umask(0o007)  # the unit's UMask=, which the workers inherit
    try:
        run_as, cgroups = resolve_run_as(config.process), resolve_cgroups(config.process)
        async with running_gateway(config, run_as=run_as, cgroups=cgroups) as gw:
            try:
                yield gw
            finally:
                await gw.parts.close()
    finally:
        os.umask(umask)


def workers(gw: RunningGateway) -> FileWorkers:
    assert isinstance(gw.parts.files, FileWorkers)
    return gw.parts.files


async def key_uid(gw: RunningGateway, name: str) -> int:
    return BASE + await gw.db.run(functools.partial(store.key_number, name=name))


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {name: value.strip() for name, _, value in (line.partition(":") for line in lines)}


def cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text()


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


async def failure(client: Client, name: str, **inputs: Any) -> dict[str, Any]:
    result = await client.result(name, **inputs)
    assert not result["success"], result
    error: dict[str, Any] = result["error"]
    return error


async def started_worker(gw: RunningGateway, client: Client, key: str = "alice") -> int:
    """The pid of ``key``'s worker, started by a first call."""
    await client.data("filesystem.stat", path="/workspace")
    pid = workers(gw).pid(key)
    assert pid is not None
    return pid


@pytest.fixture
def fake_worker(shared_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Replace the worker's command with a script in ``shared_tmp``: ``fake_worker(code)`` runs
    ``code`` in the key's worker (with ``fs_worker``, ``wire`` and ``argv`` in scope) the first time a
    worker starts; every later worker is a real one."""
    marker = shared_tmp / "markers"
    marker.mkdir(mode=0o777)
    marker.chmod(0o777)

    def install(code: str) -> None:
        script = shared_tmp / "fake_worker.py"
        script.write_text(
            "import os, struct, sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "sys.path.insert(0, sys.argv[2])\n"
            "from kruxos_gateway.capabilities import fs_worker, _fs_wire as wire\n"
            "argv = sys.argv[3:]\n"
            "try:\n"
            f"    os.close(os.open({str(marker / 'first')!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))\n"
            "except FileExistsError:\n"
            "    sys.exit(fs_worker.main(argv))\n" + code + "\nwhile os.read(0, 1 << 16):\n    pass\n"
        )
        script.chmod(0o644)

        def command(python: str, root: str, max_write_bytes: int) -> list[str]:
            return [
                python,
                "-I",
                "-B",
                str(script),
                _fs_client.PACKAGE_DIR,
                str(shared_tmp),
                root,
                str(max_write_bytes),
            ]

        monkeypatch.setattr(_fs_client, "worker_command", command)

    return install


# --- credentials -----------------------------------------------------------------------------------


@pytest.mark.asyncio
@as_root
async def test_a_written_file_belongs_to_the_keys_uid_and_stays_shared_through_the_group(
    shared_tmp: Path,
) -> None:
    async with gateway_with_key_uids(shared_tmp) as gw:
        bob_key = await gw.create_key("bob")
        async with gw.client() as alice, gw.client(bob_key) as bob:
            await alice.data("filesystem.write", path="/workspace/team/notes.txt", content="alice's")
            made = (gw.workspace / "team").stat()
            written = (gw.workspace / "team" / "notes.txt").stat()
            assert (written.st_uid, written.st_gid) == (
                await key_uid(gw, "alice"),
                grp.getgrnam(GROUP).gr_gid,
            )
            assert oct(written.st_mode & 0o7777) == "0o660"
            assert made.st_uid == await key_uid(gw, "alice")
            assert oct(made.st_mode & 0o7777) == "0o2770"  # setgid inherited, group-writable
            # Another key reads, replaces and adds through the group, as its commands could.
            assert (await bob.data("filesystem.read", path="/workspace/team/notes.txt"))[
                "content"
            ] == "alice's"
            await bob.data("filesystem.write", path="/workspace/team/notes.txt", content="bob's")
            await bob.data("filesystem.write", path="/workspace/team/more.txt", content="bob's too")
            listed = await alice.data("process.run", command="cat team/notes.txt team/more.txt")
            assert listed["stdout"] == "bob'sbob's too"
            assert (gw.workspace / "team" / "notes.txt").stat().st_uid == await key_uid(gw, "bob")


@pytest.mark.asyncio
@as_root
async def test_content_over_the_write_limit_is_too_large_as_without_workers(shared_tmp: Path) -> None:
    async with gateway_with_key_uids(shared_tmp, max_write_bytes=10) as gw, gw.client() as alice:
        error = await failure(alice, "filesystem.write", path="/workspace/big.txt", content="x" * 11)
        assert error["type"] == "too_large"
        assert error["details"] == {"path": "/workspace/big.txt", "size": 11, "limit": 10}
        assert (await alice.data("filesystem.write", path="/workspace/small.txt", content="x" * 10))[
            "size"
        ] == 10


@pytest.mark.asyncio
@as_root
async def test_each_key_has_its_own_worker_with_exactly_the_credentials_of_its_commands(
    shared_tmp: Path,
) -> None:
    async with gateway_with_key_uids(shared_tmp) as gw:
        bob_key = await gw.create_key("bob")
        async with gw.client() as alice, gw.client(bob_key) as bob:
            pids = {"alice": await started_worker(gw, alice), "bob": await started_worker(gw, bob, "bob")}
            ids = {
                name: (await client.data("process.run", command="id -u; id -g; id -G"))["stdout"].split()
                for name, client in (("alice", alice), ("bob", bob))
            }
            for name, pid in pids.items():
                seen = status(pid)
                uid, gid, *groups = ids[name]
                assert seen["Uid"].split() == [uid] * 4
                assert seen["Gid"].split() == [gid] * 4
                assert seen["Groups"].split() == [g for g in groups if g != gid]
                assert seen["NoNewPrivs"] == "1"
            assert ids["alice"][0] != ids["bob"][0]
            assert pids["alice"] != pids["bob"]
            assert os.getpid() not in pids.values()


# --- what the agent's own processes can do to its worker -----------------------------------------


PROBE = """
import ctypes, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
def attach(pid):
    if libc.ptrace(16, pid, 0, 0) != 0:
        return os.strerror(ctypes.get_errno())
    os.waitpid(pid, 0)
    libc.ptrace(17, pid, 0, 0)
    return "attached"
def opened(path):
    try:
        open(path, "rb" if path.endswith(("mem", "environ")) else "wb").close()
        return "opened"
    except OSError as exc:
        return exc.strerror
own = subprocess.Popen(["sleep", "30"])
print("own child:", attach(own.pid))
own.kill()
worker = int(sys.argv[1])
print("worker:", attach(worker))
for name in ("fd/0", "fd/1", "mem", "environ"):
    print(name + ":", opened(f"/proc/{worker}/{name}"))
"""


@pytest.mark.asyncio
@as_root
async def test_the_agents_commands_cannot_ptrace_its_worker_or_open_its_pipes(shared_tmp: Path) -> None:
    async with gateway_with_key_uids(shared_tmp) as gw, gw.client() as alice:
        pid = await started_worker(gw, alice)
        probe = await alice.data("process.run", command=["/usr/bin/python3", "-c", PROBE, str(pid)])
        report = dict(line.split(": ", 1) for line in probe["stdout"].splitlines())
        if report.get("own child") != "attached":
            pytest.skip(f"ptrace is refused here even to a process's own child ({report}, {probe['stderr']})")
        assert report["worker"] == "Operation not permitted"
        for name in ("fd/0", "fd/1", "mem", "environ"):
            assert report[name] == "Permission denied", report
        assert (await alice.data("filesystem.stat", path="/workspace"))["type"] == "directory"
        assert workers(gw).pid("alice") == pid


@pytest.mark.asyncio
@as_root
async def test_another_agents_commands_cannot_signal_a_keys_worker(shared_tmp: Path) -> None:
    async with gateway_with_key_uids(shared_tmp) as gw:
        bob_key = await gw.create_key("bob")
        async with gw.client() as alice, gw.client(bob_key) as bob:
            pid = await started_worker(gw, alice)
            tried = await bob.data("process.run", command=f"kill -KILL {pid}; kill -STOP {pid}")
            assert tried["exit_code"] != 0
            assert "not permitted" in tried["stderr"]
            assert (await alice.data("filesystem.stat", path="/workspace"))["type"] == "directory"
            assert workers(gw).pid("alice") == pid


@pytest.mark.asyncio
@as_root
async def test_a_worker_the_agent_kills_mid_call_fails_that_call_and_the_next_gets_a_new_one(
    shared_tmp: Path,
) -> None:
    async with gateway_with_key_uids(shared_tmp) as gw, gw.client() as alice, gw.client() as alice_again:
        pid = await started_worker(gw, alice)
        await alice_again.data("process.run", command=f"kill -STOP {pid}")
        in_flight = asyncio.ensure_future(alice.result("filesystem.stat", path="/workspace"))
        await eventually(lambda: workers(gw).calls_in_flight("alice") == 1)
        killed = await alice_again.data("process.run", command=f"kill -KILL {pid}")
        assert killed["exit_code"] == 0
        result = await in_flight
        assert result["error"]["type"] == "execution_failed", result
        assert "file worker" in result["error"]["message"]
        assert (await alice.data("filesystem.stat", path="/workspace"))["type"] == "directory"
        assert workers(gw).pid("alice") not in (None, pid)


@pytest.mark.asyncio
@as_root
async def test_after_the_agent_kills_its_idle_worker_the_next_call_gets_a_new_one(shared_tmp: Path) -> None:
    async with gateway_with_key_uids(shared_tmp) as gw, gw.client() as alice:
        pid = await started_worker(gw, alice)
        await alice.data("process.run", command=f"kill -KILL {pid}")
        await eventually(lambda: workers(gw).pid("alice") is None)
        assert (await alice.data("filesystem.stat", path="/workspace"))["type"] == "directory"
        assert workers(gw).pid("alice") != pid


@pytest.mark.asyncio
@as_root
async def test_a_worker_the_agent_stops_fails_the_call_after_worker_timeout_and_is_replaced(
    shared_tmp: Path,
) -> None:
    async with gateway_with_key_uids(shared_tmp, worker_timeout=timeout(1)) as gw, gw.client() as alice:
        pid = await started_worker(gw, alice)
        await alice.data("process.run", command=f"kill -STOP {pid}")
        started = time.monotonic()
        error = await failure(alice, "filesystem.stat", path="/workspace")
        assert error["type"] == "execution_failed"
        assert error["details"]["worker"] == f"did not answer within {timeout(1):g} s"
        assert time.monotonic() - started >= timeout(1)
        await eventually(lambda: gone(pid))  # killed, although stopped
        assert (await alice.data("filesystem.stat", path="/workspace"))["type"] == "directory"


@pytest.mark.asyncio
@as_root
async def test_one_keys_stalled_worker_does_not_delay_another_keys_read(shared_tmp: Path) -> None:
    async with gateway_with_key_uids(shared_tmp, worker_timeout=timeout(30)) as gw:
        (gw.workspace / "big.bin").write_bytes(os.urandom(1 << 20))
        bob_key = await gw.create_key("bob")
        async with gw.client() as alice, gw.client() as alice_again, gw.client(bob_key, max_size=None) as bob:
            pid = await started_worker(gw, alice)
            await alice_again.data("process.run", command=f"kill -STOP {pid}")
            stalled = [asyncio.ensure_future(alice.result("filesystem.stat", path="/workspace"))]
            await eventually(lambda: workers(gw).calls_in_flight("alice") == 1)
            started = time.monotonic()
            read = await bob.data("filesystem.read", path="/workspace/big.bin", encoding="base64")
            assert read["size"] == 1 << 20
            assert time.monotonic() - started < timeout(2)
            assert not stalled[0].done()
            await alice_again.data("process.run", command=f"kill -KILL {pid}")
            assert (await stalled[0])["error"]["type"] == "execution_failed"


@pytest.mark.asyncio
@as_root
async def test_a_stalled_worker_is_sent_at_most_8_calls_and_the_rest_go_to_its_successor(
    shared_tmp: Path,
) -> None:
    stat = {"name": "filesystem.stat", "inputs": {"path": "/workspace"}}
    async with (
        gateway_with_key_uids(shared_tmp, worker_timeout=timeout(30)) as gw,
        gw.client() as alice,
        gw.client() as alice_again,
    ):
        pid = await started_worker(gw, alice)
        await alice_again.data("process.run", command=f"kill -STOP {pid}")
        sent = [await alice.send_request("capabilities.invoke", stat) for _ in range(12)]
        await eventually(lambda: workers(gw).calls_in_flight("alice") == fs_worker.MAX_IN_FLIGHT)
        await alice_again.data("process.run", command=f"kill -KILL {pid}")
        answers = [await alice.recv() for _ in sent]
    assert sorted(a["result"]["success"] for a in answers) == [False] * 8 + [True] * 4


@pytest.mark.asyncio
@as_root
async def test_a_worker_runs_in_a_cgroup_of_its_own_removed_when_it_ends(
    shared_tmp: Path, cgroup_root: Path
) -> None:
    async with gateway_with_key_uids(shared_tmp, cgroup_root) as gw, gw.client() as alice:
        pid = await started_worker(gw, alice)
        placed = cgroup_of(pid)
        assert f"{cgroup_root.name}/fs-" in placed, placed
        await alice.data("process.run", command=f"kill -KILL {pid}")
        await eventually(lambda: not list(cgroup_root.glob("fs-*")))


# --- a worker that lies ------------------------------------------------------------------------------

STAT = (
    '{"path": "/workspace", "name": "workspace", "type": "directory", "size": 1, '
    '"modified": "2026-01-01T00:00:00.000Z", "mode": "2770", "symlink_target": None}'
)
FIRST_REQUEST = (
    "reader = wire.FrameReader(1 << 26, 1 << 26)\n"
    "frames = []\n"
    "while not frames:\n"
    "    frames = reader.feed(os.read(0, 65536))\n"
    "rid = frames[0][0]\n"
    "def answer(obj, rid=rid):\n"
    "    os.write(1, wire.frame(rid, obj)[0])\n"
    f"stat = {STAT}\n"
)


@pytest.mark.asyncio
@as_root
@pytest.mark.parametrize(
    "misbehaviour",
    [
        pytest.param("os.write(1, struct.pack('>III', rid, 1 << 31, 0))", id="oversized-header"),
        pytest.param("os.write(1, struct.pack('>III', rid, 0, 1 << 31))", id="oversized-content"),
        pytest.param("os.write(1, struct.pack('>III', rid, 5, 0) + b'{nope')", id="not-json"),
        pytest.param("os.write(1, struct.pack('>III', rid, 4, 0) + b'\\xff\\xfe{}')", id="not-utf8"),
        pytest.param(
            "deep = b'[' * 99999 + b']' * 99999\nos.write(1, struct.pack('>III', rid, len(deep), 0) + deep)",
            id="nested-too-deep",
        ),
        pytest.param("answer({'ok': stat}, rid=rid + 1000)", id="unknown-request-id"),
        pytest.param("answer({'ok': {**stat, 'type': 'evil'}})", id="unknown-type"),
        pytest.param("answer({'ok': {**stat, 'size': 2**70}})", id="huge-number"),
        pytest.param("answer({'ok': {**stat, 'size': '1'}})", id="number-as-text"),
        pytest.param("answer({'ok': {**stat, 'path': '/workspace/elsewhere'}})", id="another-path"),
        pytest.param("answer({'ok': {**stat, 'extra': 1}})", id="unknown-field"),
        pytest.param(
            "answer({'ok': stat, 'error': {'class': 'NotFound', 'message': '?'}})", id="ok-and-error"
        ),
        pytest.param(
            "answer({'error': {'class': 'PolicyDenied', 'message': 'the operator said no'}})",
            id="forged-error",
        ),
        pytest.param(
            "os.write(1, wire.frame(rid, {'ok': stat}, b'extra')[0] + b'extra')", id="content-with-stat"
        ),
        pytest.param("sys.exit(0)", id="exits"),
    ],
)
async def test_a_worker_that_breaks_the_protocol_fails_only_that_call(
    shared_tmp: Path, fake_worker: Any, misbehaviour: str
) -> None:
    fake_worker(FIRST_REQUEST + misbehaviour)
    async with gateway_with_key_uids(shared_tmp) as gw:
        bob_key = await gw.create_key("bob")
        async with gw.client() as alice, gw.client(bob_key) as bob:
            error = await failure(alice, "filesystem.stat", path="/workspace")
            assert error["type"] == "execution_failed"
            assert error["message"].startswith("filesystem.stat did not complete: this key's file worker")
            assert (await bob.data("filesystem.stat", path="/workspace"))["type"] == "directory"
            assert (await alice.data("filesystem.stat", path="/workspace"))["type"] == "directory"


@pytest.mark.asyncio
@as_root
async def test_a_worker_that_reports_an_error_is_believed_only_for_errors_it_may_report(
    shared_tmp: Path, fake_worker: Any
) -> None:
    fake_worker(
        FIRST_REQUEST
        + "answer({'error': {'class': 'NotFound', 'message': 'made up', 'recovery': [['a', 'b']], "
        "'details': {'path': '/workspace', 'errno': 2}}})"
    )
    async with gateway_with_key_uids(shared_tmp) as gw, gw.client() as alice:
        error = await failure(alice, "filesystem.stat", path="/workspace")
    assert error["type"] == "not_found"
    assert error["message"] == "made up"
    assert error["details"] == {"path": "/workspace", "errno": 2}


# --- the second layer on its own -----------------------------------------------------------------

BROKEN_WALK = '''
"""The descriptor walk, broken: every symlink is followed, wherever it leads."""
import contextlib, os
from kruxos_gateway.capabilities.workspace import Location, Workspace

@contextlib.contextmanager
def following(self, path, **_):
    agent = self.agent_path(path)
    real = os.path.realpath(os.path.join(self.root, agent.removeprefix("/workspace").lstrip("/")))
    fd = os.open(os.path.dirname(real), os.O_PATH | os.O_DIRECTORY)
    try:
        yield Location(agent, fd, os.path.basename(real), real)
    finally:
        os.close(fd)
'''


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.asyncio
@as_root
async def test_with_the_walk_broken_the_keys_uid_still_keeps_the_gateways_state_out_of_reach(
    shared_tmp: Path, fake_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (shared_tmp / "broken_walk.py").write_text(BROKEN_WALK)
    fake_worker(
        "fs_worker.keep_out()\n"
        "import broken_walk\n"
        "from kruxos_gateway.capabilities.workspace import Workspace\n"
        "Workspace.locate = broken_walk.following\n"
        "sys.exit(fs_worker.main(argv))\n"
    )
    async with gateway_with_key_uids(shared_tmp) as gw, gw.client() as alice:
        state = gw.config.state_dir
        (gw.workspace / "escape").symlink_to(state)
        read = await failure(alice, "filesystem.read", path="escape/gateway.db", encoding="base64")
        wrote = await failure(alice, "filesystem.write", path="escape/planted", content="x")
        listed = await failure(alice, "filesystem.list", path="escape")
    assert [read["type"], wrote["type"], listed["type"]] == ["permission_denied"] * 3
    assert not (state / "planted").exists()
    # The same broken walk as the gateway's own user reads the database: only the uid stopped it.
    monkeypatch.setattr(Workspace, "locate", load(shared_tmp / "broken_walk.py").following)
    stolen = _fs_ops.read(Workspace(gw.workspace), "escape/gateway.db", "base64", 1 << 30)
    assert stolen["size"] == gw.config.db_path.stat().st_size > 0


# --- lifecycle -----------------------------------------------------------------------------------


@pytest.mark.asyncio
@as_root
async def test_a_worker_without_calls_for_worker_idle_timeout_exits(shared_tmp: Path) -> None:
    async with gateway_with_key_uids(shared_tmp, worker_idle_timeout=0.2) as gw, gw.client() as alice:
        pid = await started_worker(gw, alice)
        await eventually(lambda: gone(pid))
        assert workers(gw).pid("alice") is None
        assert await started_worker(gw, alice) != pid


@pytest.mark.asyncio
@as_root
async def test_stopping_the_gateway_stops_every_worker(shared_tmp: Path) -> None:
    async with gateway_with_key_uids(shared_tmp) as gw:
        bob_key = await gw.create_key("bob")
        async with gw.client() as alice, gw.client(bob_key) as bob:
            pids = [await started_worker(gw, alice), await started_worker(gw, bob, "bob")]
        await gw.parts.close()
        assert all(gone(pid) for pid in pids)


async def write_then_fail(a: AsyncAgent) -> None:
    async with transaction(a) as tx:
        await tx.invoke("filesystem.write", path="/workspace/notes.md", content="after")
        await tx.invoke("filesystem.write", path="/workspace/new.txt", content="new")
        await tx.invoke("filesystem.read", path="/workspace/missing")


@pytest.mark.asyncio
@as_root
async def test_a_transaction_undoes_what_a_worker_wrote(shared_tmp: Path) -> None:
    async with gateway_with_key_uids(shared_tmp) as gw:
        (gw.workspace / "notes.md").write_text("before\n")
        async with agent(gw) as a:
            with pytest.raises(CapabilityError):
                await write_then_fail(a)
    assert (gw.workspace / "notes.md").read_text() == "before\n"
    assert not (gw.workspace / "new.txt").exists()


def test_the_mode_in_force_is_said_and_follows_the_key_uids(tmp_path: Path) -> None:
    deny = parse_policy("version: 1\ndefault: deny\n")
    plain = make_config(tmp_path)
    assert "in the gateway process" in compose.build(plain, Database(plain.db_path), deny).files.describe()
    keyed = make_config(
        tmp_path, process={"run_as_user": "nobody", "run_as_group": GROUP, "key_uid_base": BASE}
    )
    built = compose.build(keyed, Database(keyed.db_path), deny, run_as=resolve_run_as(keyed.process))
    assert "one worker process per key" in built.files.describe()


# --- the worker's code ---------------------------------------------------------------------------


def test_the_worker_imports_nothing_of_the_database_the_state_or_pydantic() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from kruxos_gateway.capabilities import fs_worker\n"
        "fs_worker.keep_out()\n"
        "from kruxos_gateway.capabilities import _fs_ops, workspace\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    imported = subprocess.run(
        [sys.executable, "-I", "-c", code, _fs_client.PACKAGE_DIR], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "kruxos_gateway.capabilities._fs_ops" in imported
    assert not [m for m in imported if m.startswith(("pydantic", "sqlite3", "_sqlite3", *fs_worker.REFUSED))]


@pytest.mark.parametrize("step", [1, 5, 1 << 16], ids=["byte-by-byte", "odd-chunks", "at-once"])
def test_frames_come_out_whole_however_the_bytes_arrive(step: int) -> None:
    frames = [_fs_wire.frame(1, {"ok": {}}), _fs_wire.frame(2, {"ok": {"n": "é"}}, b"\0" * 1000)]
    stream = b"".join(head + raw for head, raw in frames)
    reader = _fs_wire.FrameReader(1 << 10, 1 << 10)
    out = [f for i in range(0, len(stream), step) for f in reader.feed(stream[i : i + step])]
    assert [(i, _fs_wire.parse_header(h), len(r)) for i, h, r in out] == [
        (1, {"ok": {}}, 0),
        (2, {"ok": {"n": "é"}}, 1000),
    ]


def test_a_frame_over_its_bound_is_refused_before_its_body_arrives() -> None:
    reader = _fs_wire.FrameReader(max_header=100, max_raw=1000)
    with pytest.raises(_fs_wire.FrameError):
        reader.feed(_fs_wire.PREFIX.pack(1, 10, 1001))
