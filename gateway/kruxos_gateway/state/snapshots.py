"""Byte-for-byte snapshots of workspace paths, and putting them back (blocking; run in a thread).

A snapshot records what one path was before a transactional capability touched it: absent, a file
(bytes, mode, times), a symlink (its target) or a directory tree (copied with its symlinks, modes and
times). :func:`restore` makes the path that again, whatever is there now.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import GatewayError
from ..workspace import Workspace


@dataclass(frozen=True)
class Snapshot:
    agent: str  # /workspace/... as the agent named it
    real: str  # the resolved path on disk when the snapshot was taken
    kind: str  # "absent", "file", "symlink" or "directory"
    copy: str | None  # where the bytes were copied (file, directory)
    link_target: str | None = None


def top_missing(ws: Workspace, agent_path: str) -> str:
    """The highest ancestor of ``agent_path`` (or itself) that does not exist yet.

    A write or mkdir with parent creation makes every missing ancestor; undoing it removes the
    topmost one. If the path exists, it is itself.
    """
    current = ws.agent_path(agent_path)
    highest = current
    while current != "/workspace":
        real = ws.resolve(current, follow_final=False).real
        if os.path.lexists(real):
            break
        highest = current
        current = os.path.dirname(current)
    return highest


@dataclass
class Budget:
    """Bytes a transaction may still copy into snapshots (``state.max_transaction_snapshot_bytes``)."""

    remaining: int


def _refuse(agent: str, why: str, fix: str) -> GatewayError:
    return GatewayError(
        f"{agent} {why}, so it cannot be restored on rollback",
        error_type="not_transactional",
        recovery=[("run_outside_transaction", fix)],
        details={"path": agent},
    )


def _size(real: str, agent: str) -> int:
    """Bytes a snapshot of ``real`` copies; refuses special files (a FIFO would block the copy)."""
    st = os.lstat(real)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISLNK(st.st_mode):
        return 0
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(agent, "is neither a file, a directory nor a symlink", "leave special files alone")
    total = 0
    for dirpath, dirnames, filenames in os.walk(real):
        for name in dirnames + filenames:
            entry = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(entry.st_mode):
                total += entry.st_size
            elif not (stat.S_ISDIR(entry.st_mode) or stat.S_ISLNK(entry.st_mode)):
                raise _refuse(agent, "contains a special file (FIFO, socket or device)", "move it out first")
    return total


def take(ws: Workspace, agent_path: str, into: Path, budget: Budget) -> Snapshot:
    """Record what ``agent_path`` is now (copying its bytes under ``into``, charged to ``budget``)."""
    wp = ws.resolve(agent_path, follow_final=False)
    try:
        size = _size(wp.real, wp.agent)
        st = os.lstat(wp.real)
    except FileNotFoundError:
        return Snapshot(wp.agent, wp.real, "absent", None)
    if size > budget.remaining:
        raise _refuse(
            wp.agent,
            f"holds {size} bytes, more than this transaction may still snapshot ({budget.remaining})",
            "change large trees outside a transaction, or in several smaller transactions",
        )
    budget.remaining -= size
    copy = str(into)
    if stat.S_ISLNK(st.st_mode):
        return Snapshot(wp.agent, wp.real, "symlink", None, os.readlink(wp.real))
    if stat.S_ISDIR(st.st_mode):
        shutil.copytree(wp.real, copy, symlinks=True)
        shutil.copystat(wp.real, copy, follow_symlinks=False)
        return Snapshot(wp.agent, wp.real, "directory", copy)
    shutil.copy2(wp.real, copy, follow_symlinks=False)
    return Snapshot(wp.agent, wp.real, "file", copy)


def restore(ws: Workspace, snap: Snapshot) -> str | None:
    """Make the path what the snapshot says; return a note if it could not be done safely."""
    try:
        wp = ws.resolve(snap.agent, follow_final=False)
    except GatewayError:
        return f"{snap.agent}: a parent is now a symlink out of the workspace; not restored"
    if wp.real != snap.real:
        return f"{snap.agent}: a parent directory was replaced by a symlink; not restored"
    _remove(wp.real)
    if snap.kind == "absent":
        return None
    os.makedirs(os.path.dirname(wp.real), exist_ok=True)
    if snap.kind == "symlink":
        assert snap.link_target is not None
        os.symlink(snap.link_target, wp.real)
    elif snap.kind == "directory":
        assert snap.copy is not None
        shutil.copytree(snap.copy, wp.real, symlinks=True)
        shutil.copystat(snap.copy, wp.real, follow_symlinks=False)
    else:
        assert snap.copy is not None
        shutil.copy2(snap.copy, wp.real, follow_symlinks=False)
    return None


def _remove(real: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(real)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(real)
        else:
            os.unlink(real)
