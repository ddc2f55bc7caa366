"""A hostile agent against filesystem.* and transaction snapshots: it cannot reach past the workspace.

The agent owns the workspace (its own commands write there), so it can swap a directory for a
symlink out of it at any moment, plant setuid programs and name files with bytes that are not
UTF-8. Each test here is one thing it tries; the canary directory beside the workspace must come
out of every race exactly as it went in.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kruxos_gateway.capabilities import _fs_ops
from kruxos_gateway.capabilities.workspace import Workspace
from kruxos_gateway.errors import GatewayError
from kruxos_gateway.state import snapshots

from .support import eventually, make_config, running_gateway

RACE_SECONDS = 1.5


def canary_digest(root: Path) -> dict[str, bytes | str]:
    """Every name under ``root`` with its bytes (files) or kind: the canary must not change at all."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            found[rel] = full.read_bytes() if full.is_file() and not full.is_symlink() else "dir"
    return found


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Workspace, Path]:
    """A workspace with a directory ``d`` and, beside the workspace, a canary the agent wants."""
    root = tmp_path / "workspace"
    (root / "d").mkdir(parents=True)
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "victim").write_text("the gateway's secret")
    (canary / "sub").mkdir()
    (canary / "sub" / "victim").write_text("another secret")
    return Workspace(root), canary


@contextlib.contextmanager
def swapper(root: Path, canary: Path) -> Iterator[None]:
    """What the agent runs with process.run: ``d`` flips between a directory and a symlink out."""
    stop = threading.Event()

    def flip() -> None:
        d, parked = root / "d", root / "d.parked"
        while not stop.is_set():
            with contextlib.suppress(OSError):
                os.rename(d, parked)
                os.symlink(canary, d)
                os.unlink(d)
                os.rename(parked, d)

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def race(ws: Workspace, canary: Path, attempt: Callable[[int], Any]) -> None:
    """Call ``attempt`` in a loop while ``d`` is swapped; the canary must stay as it was."""
    before = canary_digest(canary)
    deadline = time.monotonic() + RACE_SECONDS
    n = 0
    with swapper(Path(ws.root), canary):
        while time.monotonic() < deadline:
            with contextlib.suppress(GatewayError):
                attempt(n)
            n += 1
    assert canary_digest(canary) == before, "an operation reached outside the workspace"
    assert n > 100, "the race ran too few attempts to mean anything"


def test_a_write_through_a_swapped_directory_never_lands_outside(arena: tuple[Workspace, Path]) -> None:
    ws, canary = arena
    race(
        ws,
        canary,
        lambda n: _fs_ops.write(
            ws, "/workspace/d/victim", b"pwned", create_parents=False, overwrite=True, max_bytes=100
        ),
    )


def test_creating_parents_through_a_swapped_directory_never_lands_outside(
    arena: tuple[Workspace, Path],
) -> None:
    ws, canary = arena
    race(
        ws,
        canary,
        lambda n: _fs_ops.write(
            ws, f"/workspace/d/new{n}/x", b"pwned", create_parents=True, overwrite=False, max_bytes=100
        ),
    )


def test_a_delete_through_a_swapped_directory_never_removes_outside(arena: tuple[Workspace, Path]) -> None:
    ws, canary = arena
    race(
        ws, canary, lambda n: _fs_ops.delete(ws, "/workspace/d/sub" if n % 2 else "/workspace/d/victim", True)
    )


def test_a_move_through_a_swapped_directory_never_takes_files_from_outside(
    arena: tuple[Workspace, Path],
) -> None:
    ws, canary = arena
    race(
        ws,
        canary,
        lambda n: _fs_ops.move(
            ws, "/workspace/d/victim", f"/workspace/got{n}", overwrite=False, create_parents=False
        ),
    )


def test_a_move_through_a_swapped_directory_never_puts_files_outside(arena: tuple[Workspace, Path]) -> None:
    ws, canary = arena
    (Path(ws.root) / "payload").write_text("planted")

    def attempt(n: int) -> None:
        _fs_ops.move(
            ws, "/workspace/payload", f"/workspace/d/planted{n}", overwrite=False, create_parents=False
        )
        _fs_ops.move(
            ws, f"/workspace/d/planted{n}", "/workspace/payload", overwrite=False, create_parents=False
        )

    race(ws, canary, attempt)


def test_a_mkdir_through_a_swapped_directory_never_lands_outside(arena: tuple[Workspace, Path]) -> None:
    ws, canary = arena
    race(ws, canary, lambda n: _fs_ops.mkdir(ws, f"/workspace/d/made{n}/deeper", parents=True))


def test_snapshots_through_a_swapped_directory_never_copy_from_outside(
    arena: tuple[Workspace, Path], tmp_path: Path
) -> None:
    ws, canary = arena
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    copied: list[snapshots.Snapshot] = []

    def attempt(n: int) -> None:
        copied.append(snapshots.take(ws, "/workspace/d/victim", scratch / str(n), snapshots.Budget(1 << 20)))

    race(ws, canary, attempt)
    leaked = [
        s for s in copied if s.copy and Path(s.copy).is_file() and b"secret" in Path(s.copy).read_bytes()
    ]
    assert not leaked, "a snapshot copied a file from outside the workspace"


def test_restores_through_a_swapped_directory_never_write_outside(
    arena: tuple[Workspace, Path], tmp_path: Path
) -> None:
    ws, canary = arena
    (Path(ws.root) / "d" / "victim").write_text("the agent's own file")
    (Path(ws.root) / "d" / "sub").mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    file_snap = snapshots.take(ws, "/workspace/d/victim", scratch / "f", snapshots.Budget(1 << 20))
    tree_snap = snapshots.take(ws, "/workspace/d/sub", scratch / "t", snapshots.Budget(1 << 20))
    absent_snap = snapshots.take(ws, "/workspace/d/never", scratch / "a", snapshots.Budget(1 << 20))
    race(ws, canary, lambda n: snapshots.restore(ws, (file_snap, tree_snap, absent_snap)[n % 3]))


def test_a_replaced_setuid_program_loses_its_special_bits(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    program = tmp_path / "cat"
    program.write_bytes(b"\x7fELF...")
    os.chmod(program, 0o6755)
    _fs_ops.write(ws, "/workspace/cat", b"\x7fELF new", create_parents=False, overwrite=True, max_bytes=100)
    assert stat.S_IMODE(program.stat().st_mode) == 0o755


@pytest.mark.parametrize(
    ("directory_mode", "file_mode"),
    [
        pytest.param(0o2770, 0o660, id="shared-setgid-workspace"),
        pytest.param(0o755, 0o644, id="private-directory"),
    ],
)
def test_a_new_file_follows_its_directory_whatever_the_umask(
    tmp_path: Path, directory_mode: int, file_mode: int
) -> None:
    ws = Workspace(tmp_path)
    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", directory_mode)
    old_umask = os.umask(0o077)
    try:
        _fs_ops.write(
            ws, "/workspace/shared/new.txt", b"x", create_parents=False, overwrite=False, max_bytes=10
        )
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "shared" / "new.txt").stat().st_mode) == file_mode


def restrict_suid_sgid(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, as the appliance unit's RestrictSUIDSGID=: asking for setuid or setgid is EPERM."""

    def refusing(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(target: Any, mode: int, *args: Any, **kwargs: Any) -> Any:
            if mode & (stat.S_ISUID | stat.S_ISGID):
                raise PermissionError(1, "Operation not permitted (RestrictSUIDSGID)")
            return real(target, mode, *args, **kwargs)

        return call

    for name in ("chmod", "fchmod", "lchmod", "mkdir"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refusing(getattr(os, name)))


def test_a_setgid_directory_is_snapshotted_and_restored_under_restrict_suid_sgid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "workspace"
    (root / "project" / "src").mkdir(parents=True)
    (root / "project" / "src" / "main.py").write_text("print('hi')\n")
    for directory in (root, root / "project", root / "project" / "src"):
        directory.chmod(0o2770)  # as tmpfiles makes the workspace, and the kernel its subdirectories
    ws = Workspace(root)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    restrict_suid_sgid(monkeypatch)
    old_umask = os.umask(0o007)  # the unit's UMask=
    try:
        snap = snapshots.take(ws, "/workspace/project", scratch / "0", snapshots.Budget(1 << 20))
        _fs_ops.delete(ws, "/workspace/project", recursive=True)
        assert snapshots.restore(ws, snap) is None
    finally:
        os.umask(old_umask)
    assert (root / "project" / "src" / "main.py").read_text() == "print('hi')\n"
    assert stat.S_IMODE((root / "project" / "src").stat().st_mode) == 0o2770


def test_a_name_that_is_not_utf8_is_listed_and_can_be_used_again(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.txt"), "wb") as f:
        f.write(b"latin-1 name")
    listed = _fs_ops.list_dir(ws, "/workspace")
    (entry,) = listed["entries"]
    assert entry["name"] == "caf\\xe9.txt"
    assert entry["name"].encode("utf-8")  # sendable as JSON text
    assert _fs_ops.read(ws, entry["path"], "utf-8", 100)["content"] == "latin-1 name"
    assert _fs_ops.stat_path(ws, entry["path"])["type"] == "file"


def plant(directory: bytes, name: bytes) -> None:
    """What ``process.run touch $'\\xff\\xfe'`` leaves: a one-byte file whose name is not UTF-8."""
    os.mkdir(directory)
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x")
    os.close(fd)


@pytest.mark.asyncio
async def test_a_directory_with_a_name_that_is_not_utf8_answers_every_agent(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_gateway(config) as gw, gw.client() as client:
        plant(os.path.join(os.fsencode(gw.workspace), b"d"), b"\xff\xfe")
        listed = await client.data("filesystem.list", path="/workspace/d")
        assert [e["name"] for e in listed["entries"]] == ["\\xff\\xfe"]
        stat_of = await client.data("filesystem.stat", path=listed["entries"][0]["path"])
        assert stat_of["size"] == 1


@pytest.mark.asyncio
async def test_overlapping_transactions_of_a_closed_connection_roll_back_newest_step_first(
    tmp_path: Path,
) -> None:
    # Ten transactions each move one file one step further, then the agent disconnects: undoing them
    # one transaction at a time, oldest first, put back a copy at every step (ten copies).
    config = make_config(tmp_path)
    async with running_gateway(config) as gw:
        (gw.workspace / "f0.txt").write_text("the only copy")
        async with gw.client() as client:
            txs = []
            for _ in range(10):
                begun = await client.request("transaction.begin", {})
                txs.append(begun["result"]["transaction_id"])
            for n, tx in enumerate(txs):
                answer = await client.request(
                    "transaction.invoke",
                    {
                        "transaction_id": tx,
                        "name": "filesystem.move",
                        "inputs": {"src": f"f{n}.txt", "dst": f"f{n + 1}.txt"},
                    },
                )
                assert answer["result"]["success"] is True, answer
        await eventually(
            lambda: (gw.workspace / "f0.txt").exists() and not (gw.workspace / "f10.txt").exists()
        )
        assert sorted(p.name for p in gw.workspace.iterdir()) == ["f0.txt"]
        assert (gw.workspace / "f0.txt").read_text() == "the only copy"


def test_a_restore_raced_by_the_agent_reports_a_note_instead_of_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names the agent's commands move or remove mid-restore (seen under load in the swap race
    above) leave the path as they made it: the rollback notes it and goes on with the other steps."""
    ws = Workspace(tmp_path)
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_text("kept")
    scratch = tmp_path.parent / f"{tmp_path.name}-scratch"
    scratch.mkdir()
    snap = snapshots.take(ws, "/workspace/tree", scratch / "s", snapshots.Budget(1 << 20))

    def vanished(*args: object) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(snapshots, "_copy_in", vanished)
    note = snapshots.restore(ws, snap)
    assert (
        note
        == "/workspace/tree: changed while it was being restored (No such file or directory); not restored"
    )
