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
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..capabilities._fs_ops import remove_at
from ..capabilities.workspace import Workspace
from ..errors import GatewayError, NotTransactional, QuotaExceeded

#: Permission bits a snapshot records and puts back: never setuid, setgid or sticky. A directory
#: made in the setgid workspace inherits setgid from the kernel; asking for it (chmod, mkdir) is
#: refused under the unit's RestrictSUIDSGID=.
PERMISSION_BITS = 0o777


@dataclass(frozen=True)
class Entry:
    """What one file, link or directory of a snapshot was: its permission bits and times."""

    mode: int
    atime_ns: int
    mtime_ns: int


@dataclass(frozen=True)
class Snapshot:
    agent: str  # /workspace/... as the agent named it
    real: str  # the path on disk as walked when the snapshot was taken
    kind: str  # "absent", "file", "symlink" or "directory"
    copy: str | None  # where the bytes were copied (file, directory)
    link_target: str | None = None
    #: Metadata by path relative to the snapshot ("" for the path itself); links keep none.
    entries: dict[str, Entry] = field(default_factory=dict)


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


class KeyBudget:
    """Snapshot bytes one API key holds across all its open transactions, on every connection
    (``quotas.transaction_snapshot_bytes``). Charged from the snapshot threads, so it takes a lock."""

    def __init__(self, key_name: str, limit: int) -> None:
        self.key_name = key_name
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def charge(self, budget: Budget, size: int) -> int | None:
        """Take ``size`` bytes for the transaction of ``budget``; if that would go past the limit, take
        nothing and return the use now. A transaction already ended takes nothing (a snapshot thread
        can outlive the connection that waited for it)."""
        with self._lock:
            if budget.closed:
                return None
            if self.used + size > self.limit:
                return self.used
            self.used += size
            budget.held += size
            return None

    def release(self, budget: Budget) -> None:
        """The transaction of ``budget`` ended: give back what it held."""
        with self._lock:
            self.used -= budget.held
            budget.held = 0
            budget.closed = True


@dataclass
class Budget:
    """Bytes a transaction may still copy into snapshots (``state.max_transaction_snapshot_bytes``),
    and its key's budget over all its transactions (``quotas.transaction_snapshot_bytes``), of which
    it holds ``held`` until it ends (``transactions.Transactions``)."""

    remaining: int
    key: KeyBudget | None = None
    held: int = 0
    closed: bool = False


class _Copy:
    """Copies one tree out of the workspace by descriptor, counting bytes against a budget."""

    def __init__(self, agent: str, budget: int, whole: Budget | None = None) -> None:
        self.agent = agent
        self.budget = budget
        self.whole = whole
        self.copied = 0
        self.entries: dict[str, Entry] = {}

    def out(self, dir_fd: int, name: str, dest: str, relative: str = "") -> str:
        """Copy ``name`` in ``dir_fd`` to ``dest`` without following a symlink; return its kind."""
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink("", dir_fd=fd), dest)
                return "symlink"
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise _refuse(
                    self.agent, "is or contains a special file (FIFO, socket or device)", "move it out first"
                )
            self.entries[relative] = Entry(stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns)
            # Reopened through /proc-free O_PATH: openat(fd, ".") for a directory, the file by name
            # relative to the directory held, and checked to be the inode that was looked at.
            if stat.S_ISDIR(st.st_mode):
                self._directory(
                    os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd), dest, relative
                )
                return "directory"
        finally:
            os.close(fd)
        self._file(dir_fd, name, st, dest)
        return "file"

    def _directory(self, fd: int, dest: str, relative: str) -> None:
        try:
            os.mkdir(dest, 0o700)
            with os.scandir(fd) as it:
                names = [entry.name for entry in it]
            for child in names:
                with contextlib.suppress(FileNotFoundError):  # removed while copying
                    self.out(
                        fd, child, os.path.join(dest, child), f"{relative}/{child}" if relative else child
                    )
        finally:
            os.close(fd)

    def _file(self, dir_fd: int, name: str, looked_at: os.stat_result, dest: str) -> None:
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(src)
            if (st.st_dev, st.st_ino) != (looked_at.st_dev, looked_at.st_ino):
                raise FileNotFoundError(name)  # swapped meanwhile: the caller treats it as removed
            self._charge(st.st_size)
            dst = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _pump(src, dst, self)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _charge(self, size: int) -> None:
        self.copied += size
        if self.copied > self.budget:
            raise _refuse(
                self.agent,
                f"holds {self.copied} bytes or more, more than this transaction may still snapshot"
                f" ({self.budget})",
                "change large trees outside a transaction, or in several smaller transactions",
            )
        whole = self.whole
        if whole is None or whole.key is None:
            return
        key = whole.key
        used = key.charge(whole, size)
        if used is not None:
            raise QuotaExceeded(
                "transaction_snapshot_bytes",
                f"{self.agent} needs {size} more bytes of snapshots, and the open transactions of the "
                f"API key {key.key_name!r} already hold {used} of its quota of {key.limit} "
                "(quotas.transaction_snapshot_bytes)",
                used=used,
                limit=key.limit,
                fix="commit or roll back your other open transactions first, or change large trees "
                "outside a transaction",
                path=self.agent,
            )


def _pump(src: int, dst: int, charge: _Copy | None = None) -> None:
    """Copy every byte of ``src`` to ``dst``; bytes past the size looked at are charged too."""
    expected = os.fstat(src).st_size
    seen = 0
    while chunk := os.read(src, 1 << 20):
        seen += len(chunk)
        if charge is not None and seen > expected:
            charge._charge(len(chunk))
        os.write(dst, chunk)


def _refuse(agent: str, why: str, fix: str) -> NotTransactional:
    return NotTransactional(
        f"{agent} {why}, so it cannot be restored on rollback",
        recovery=[("run_outside_transaction", fix)],
        details={"path": agent},
    )


def take(ws: Workspace, agent_path: str, into: Path, budget: Budget) -> Snapshot:
    """Record what ``agent_path`` is now (copying its bytes under ``into``, charged to ``budget``)."""
    agent = ws.agent_path(agent_path)
    copy = _Copy(agent, budget.remaining, budget)
    try:
        with ws.locate(agent, follow_final=False) as loc:
            if loc.is_root:
                raise _refuse(agent, "is the workspace root", "change the entries inside /workspace instead")
            real = loc.real
            kind = copy.out(loc.parent_fd, loc.name, str(into))
    except (FileNotFoundError, NotADirectoryError):  # the path, or a parent, is not there
        _remove_copy(str(into))
        return Snapshot(agent, ws.resolve(agent, follow_final=False).real, "absent", None)
    except BaseException:
        _remove_copy(str(into))
        raise
    budget.remaining -= copy.copied
    if kind == "symlink":
        return Snapshot(agent, real, "symlink", None, os.readlink(into))
    return Snapshot(agent, real, kind, str(into), entries=copy.entries)


def restore(ws: Workspace, snap: Snapshot) -> str | None:
    """Make the path what the snapshot says; return a note if it could not be done safely."""
    try:
        with ws.locate(snap.agent, follow_final=False, create_parents=True) as loc:
            if loc.real != snap.real:
                return f"{snap.agent}: a parent directory was replaced by a symlink; not restored"
            with contextlib.suppress(FileNotFoundError):
                remove_at(loc.parent_fd, loc.name)
            if snap.kind == "symlink":
                assert snap.link_target is not None
                os.symlink(snap.link_target, loc.name, dir_fd=loc.parent_fd)
            elif snap.kind != "absent":
                assert snap.copy is not None
                _copy_in(snap, snap.copy, loc.parent_fd, loc.name, "")
    except GatewayError:
        return f"{snap.agent}: a parent is now a symlink out of the workspace; not restored"
    except NotADirectoryError:
        return f"{snap.agent}: a parent directory was replaced by a file; not restored"
    except OSError as exc:
        # Someone (the agent's own commands) moved, made or removed names along the path while it
        # was being put back: what is there now is theirs, and nothing was written outside it.
        return f"{snap.agent}: changed while it was being restored ({exc.strerror}); not restored"
    return None


def _copy_in(snap: Snapshot, src: str, dir_fd: int, name: str, relative: str) -> None:
    """Put the copy at ``src`` (the gateway's own scratch) back as ``name`` in ``dir_fd``."""
    if os.path.islink(src):
        os.symlink(os.readlink(src), name, dir_fd=dir_fd)
        return
    entry = snap.entries[relative]
    mode = entry.mode & PERMISSION_BITS
    if os.path.isdir(src):
        # Owner access while the children are made; the recorded bits are set afterwards, if need be.
        os.mkdir(name, mode | 0o700, dir_fd=dir_fd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            for child in sorted(os.listdir(src)):
                _copy_in(
                    snap, os.path.join(src, child), fd, child, f"{relative}/{child}" if relative else child
                )
            if stat.S_IMODE(os.fstat(fd).st_mode) & PERMISSION_BITS != mode:
                _chmod_keeping_setgid(fd, mode)
            os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))
        finally:
            os.close(fd)
        return
    dst = os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
    )
    try:
        src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _pump(src_fd, dst)
        finally:
            os.close(src_fd)
        os.fchmod(dst, mode)
        os.utime(dst, ns=(entry.atime_ns, entry.mtime_ns))
    finally:
        os.close(dst)


def _chmod_keeping_setgid(fd: int, mode: int) -> None:
    """chmod a directory, keeping the setgid bit it inherited where the sandbox lets us say so."""
    inherited = os.fstat(fd).st_mode & stat.S_ISGID
    try:
        os.fchmod(fd, mode | inherited)
    except PermissionError:  # RestrictSUIDSGID=: the bits without setgid, rather than none
        os.fchmod(fd, mode)


def _remove_copy(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
