"""How the gateway starts the processes that act for an agent: ``process.run``'s commands and the
per-key file workers (``_fs_client.py``) get the same credentials, environment, limits and cgroup.

With ``process.key_uid_base`` a key's processes run as that key's own uid (``key_uid_base`` + the
key's number, which stays with its name), in ``run_as_group`` and no other group; with
``run_as_user`` alone as that user, with its groups; with neither, as the gateway itself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ExecutionFailed
from ..storage import store
from ._cgroups import CommandCgroups

if TYPE_CHECKING:
    from ..config import ProcessConfig
    from .base import Context

#: How long a process that was told to stop (SIGTERM, or EOF on its stdin) has before SIGKILL.
KILL_GRACE_SECONDS = 2.0
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Credentials:
    """The uid, gid and supplementary groups a process for one key runs with."""

    uid: int
    gid: int
    extra_groups: tuple[int, ...] = ()

    def popen_kwargs(self) -> dict[str, Any]:
        """The arguments of ``subprocess.Popen`` (and asyncio's ``*_exec``) that switch to them."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.extra_groups)}


async def credentials(ctx: Context) -> Credentials | None:
    """Who the calling key's processes run as (``None``: as the gateway, nothing to switch)."""
    run_as = ctx.run_as
    if run_as is None:
        return None
    if run_as.key_uids is None:
        return Credentials(run_as.uid, run_as.gid, run_as.extra_groups)
    base, count = run_as.key_uids
    number = await ctx.db.run(functools.partial(store.key_number, name=ctx.key_name))
    if number >= count:
        raise ExecutionFailed(
            f"key {ctx.key_name!r} is number {number}, past the {count} uids of process.key_uid_count",
            recovery=[("ask_operator", "ask the operator to raise process.key_uid_count")],
        )
    # No supplementary groups: the workspace group is what every key's processes share, and all.
    return Credentials(base + number, run_as.gid)


def clean_environment(home: str) -> dict[str, str]:
    """A clean environment: nothing of the gateway's own (its PATH names its virtual environment on a
    host, its other variables say how it runs) reaches a process started for an agent."""
    return {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": home}


def has_rlimits(limits: ProcessConfig) -> bool:
    return limits.max_memory_bytes is not None or limits.max_tasks is not None


def apply_rlimits(log: logging.Logger, pid: int, limits: ProcessConfig) -> None:
    """Without cgroups: per-process limits, weaker (a process's own, or its uid's, not its tree's)."""
    settings = [
        (resource.RLIMIT_AS, limits.max_memory_bytes),
        (resource.RLIMIT_NPROC, limits.max_tasks),
    ]
    for which, value in settings:
        if value is not None:
            try:
                resource.prlimit(pid, which, (value, value))
            except PermissionError:  # another uid, and no CAP_SYS_RESOURCE
                log.warning("cannot set resource limits on pid %d (no cgroups)", pid)


async def release_cgroup(path: Path) -> None:
    """Kill whatever is left in a process's cgroup (daemons too) and remove the cgroup."""
    CommandCgroups.kill(path)
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    # Polled: the kernel reports a cgroup emptied only through cgroup.events (inotify), and the
    # killed processes are gone within milliseconds.
    while not CommandCgroups.try_remove(path) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
