"""One cgroup (v2) per ``process.run`` command, in a subtree delegated to the gateway.

A process group is not a boundary: a command that calls ``setsid`` or forks twice leaves it, and
outlives the timeout, the cancelled request and the gateway. A cgroup holds every descendant, forked
or daemonised, until the gateway lets it go: the command's cgroup is killed as a whole
(``cgroup.kill``) when the command ends, times out or is cancelled, and cgroups left by a gateway
that stopped are swept at start. Limits (memory, tasks, CPU) are set on it where the controllers are
delegated.

On the appliance the unit has ``Delegate=`` and ``ProtectControlGroups=private``: it sees only its own
cgroup, as ``/sys/fs/cgroup``, moves itself into ``gateway`` and runs its commands in sibling
cgroups ``…/cmd-<id>`` (``process.cgroup_root: delegated``). When systemd stops or restarts the unit
it kills the whole unit cgroup, commands included.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

CGROUP_MOUNT = Path("/sys/fs/cgroup")
#: What ``process.cgroup_root`` says for the parent of the gateway's own cgroup.
DELEGATED = "delegated"
PREFIX = "cmd-"
WORKER_PREFIX = "fs-"  # a key's file worker (capabilities/fs_worker.py): swept alike, apart in listings
PREFIXES = (PREFIX, WORKER_PREFIX)


@dataclass(frozen=True)
class Limits:
    """Per-command limits from the configuration; ``None``: not limited."""

    memory_bytes: int | None = None
    tasks: int | None = None
    cpus: float | None = None


def own_cgroup(proc_self_cgroup: str) -> Path:
    """The gateway's own cgroup (v2) from the text of ``/proc/self/cgroup``."""
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return CGROUP_MOUNT / line[3:].lstrip("/")
    raise ConfigError(
        "process.cgroup_root: delegated, but this system has no unified (v2) cgroup hierarchy;"
        " set process.cgroup_root: null to use process groups"
    )


def _delegated_root() -> Path:
    """The cgroup delegated to the gateway's unit, with the gateway itself moved out of the way.

    With ``ProtectControlGroups=private`` the unit runs in a cgroup namespace whose root is the unit's
    own cgroup, and the gateway starts there (``0::/``). A cgroup with processes cannot have children
    with controllers (cgroup v2's no-internal-processes rule), so the gateway moves itself into the
    child ``gateway``, and its commands' cgroups are its siblings. Started in a child already (the
    unit's ``DelegateSubgroup=``, no namespace), the parent of that child is the root.
    """
    own = own_cgroup(Path("/proc/self/cgroup").read_text())
    if own != CGROUP_MOUNT:
        return own.parent
    home = own / "gateway"
    try:
        home.mkdir(mode=0o755, exist_ok=True)
        (home / "cgroup.procs").write_text(str(os.getpid()))
    except OSError as exc:
        raise ConfigError(
            f"process.cgroup_root: delegated, but the gateway cannot move itself into {home}:"
            f" {exc.strerror}; the unit needs Delegate=yes (or set process.cgroup_root: null)"
        ) from None
    return own


class CommandCgroups:
    """Makes, limits, kills and removes the cgroups of commands under ``root``."""

    def __init__(self, root: Path, limits: Limits) -> None:
        self.root = root
        self.limits = limits

    @classmethod
    def configured(cls, setting: str | None, limits: Limits) -> CommandCgroups | None:
        """The cgroups that ``process.cgroup_root`` asks for, checked now (``ConfigError`` if unusable)."""
        if setting is None:
            return None
        root = _delegated_root() if setting == DELEGATED else Path(setting)
        if not (root / "cgroup.procs").is_file() or not os.access(root, os.W_OK):
            raise ConfigError(
                f"process.cgroup_root: {root} is not a cgroup the gateway may create cgroups in;"
                " the unit needs Delegate=yes (or set process.cgroup_root: null)"
            )
        cgroups = cls(root, limits)
        cgroups._enable_controllers()
        cgroups.sweep()
        return cgroups

    def _enable_controllers(self) -> None:
        available = set((self.root / "cgroup.controllers").read_text().split())
        wanted = {"memory", "pids", "cpu"} & available
        if wanted:
            # Fails (EBUSY) if a process sits in root itself: the gateway must be in a subgroup.
            with contextlib.suppress(OSError):
                (self.root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(wanted)))

    def sweep(self) -> int:
        """Kill and remove the cgroups of commands and file workers a stopped gateway left; return
        how many there were."""
        found = 0
        for prefix in PREFIXES:
            for path in self.root.glob(f"{prefix}*"):
                if path.is_dir():
                    found += 1
                    self.kill(path)
                    self.remove(path)
        return found

    def create(self, prefix: str = PREFIX) -> Path:
        """A new cgroup with the limits: ``cmd-…`` for a command, ``fs-…`` for a file worker."""
        assert prefix in PREFIXES
        path = self.root / f"{prefix}{secrets.token_hex(6)}"
        path.mkdir(mode=0o755)
        try:
            self._limit(path)
        except BaseException:
            path.rmdir()
            raise
        return path

    def _limit(self, path: Path) -> None:
        limits = self.limits
        settings = {
            "memory.max": limits.memory_bytes,
            "memory.swap.max": 0 if limits.memory_bytes is not None else None,
            "pids.max": limits.tasks,
            "cpu.max": f"{round(limits.cpus * 100_000)} 100000" if limits.cpus is not None else None,
        }
        for name, value in settings.items():
            if value is not None and (path / name).exists():
                (path / name).write_text(str(value))

    @staticmethod
    def add(path: Path, pid: int) -> None:
        (path / "cgroup.procs").write_text(str(pid))

    @staticmethod
    def kill(path: Path) -> None:
        """SIGKILL every process in the cgroup, descendants and daemons included."""
        try:
            (path / "cgroup.kill").write_text("1")
            return
        except FileNotFoundError:
            if not path.exists():
                return
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        # Kernels before 5.14 have no cgroup.kill: signal what is there until it is empty.
        for _ in range(100):
            pids = _pids(path)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    @staticmethod
    def signal(path: Path, sig: signal.Signals) -> None:
        for pid in _pids(path):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    @staticmethod
    def populated(path: Path) -> bool:
        try:
            events = (path / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        return "populated 1" in events

    @staticmethod
    def try_remove(path: Path) -> bool:
        """rmdir the cgroup; ``False`` while killed processes in it are still being reaped."""
        try:
            path.rmdir()
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            return False
        return True

    def remove(self, path: Path, seconds: float = 5.0) -> None:
        """Wait (blocking: start-up only) until the cgroup can be removed, and remove it."""
        deadline = time.monotonic() + seconds
        while not self.try_remove(path):
            if time.monotonic() > deadline:
                raise ConfigError(f"process.cgroup_root: cannot remove the leftover cgroup {path}")
            time.sleep(0.01)


def _pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []
