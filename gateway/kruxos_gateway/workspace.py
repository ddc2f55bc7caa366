"""Confinement of agent paths to the workspace.

Agents always address the workspace as ``/workspace/...`` (or relative to it), whatever its real
root on disk. A path is normalised lexically, mapped onto the real root and resolved through its
symlinks; anything that lands outside the root is ``path_outside_workspace``. Callers that open a
file use ``O_NOFOLLOW`` on the resolved path and re-check the opened descriptor with
``verify_fd`` so that a symlink swapped in after the check is still caught.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput, PathOutsideWorkspace

VIRTUAL_ROOT = "/workspace"


@dataclass(frozen=True)
class WorkspacePath:
    """One path, as the agent sees it and as it is on disk (symlinks resolved)."""

    agent: str
    real: str

    @property
    def is_root(self) -> bool:
        return self.agent == VIRTUAL_ROOT


class Workspace:
    """The real directory behind ``/workspace``."""

    def __init__(self, root: Path | str) -> None:
        self.root = os.path.realpath(root)

    def agent_path(self, path: str, input_name: str = "path") -> str:
        """Normalise ``path`` lexically to ``/workspace/...`` or raise ``PathOutsideWorkspace``."""
        if "\0" in path:
            raise InvalidInput(input_name, f"input {input_name!r} contains a NUL byte", "remove the NUL byte")
        if path == "":
            raise InvalidInput(
                input_name, f"input {input_name!r} is empty", 'pass a path such as "/workspace"'
            )
        absolute = path if path.startswith("/") else f"{VIRTUAL_ROOT}/{path}"
        # normpath keeps a leading '//' as is; such a path is not under /workspace and is refused.
        normalised = posixpath.normpath(absolute)
        if normalised != VIRTUAL_ROOT and not normalised.startswith(VIRTUAL_ROOT + "/"):
            raise PathOutsideWorkspace(path)
        return normalised

    def resolve(self, path: str, *, follow_final: bool = True, input_name: str = "path") -> WorkspacePath:
        """Map an agent path onto the disk and check that it stays inside the root.

        With ``follow_final=False`` a symlink as the last component is kept as is (to stat, list,
        delete or move the link itself); every directory above it is still resolved.
        """
        agent = self.agent_path(path, input_name)
        relative = agent[len(VIRTUAL_ROOT) :].lstrip("/")
        if not relative:
            return WorkspacePath(agent=agent, real=self.root)
        if follow_final:
            real = self._realpath(relative)
        else:
            parent, _, name = relative.rpartition("/")
            real = os.path.join(self._realpath(parent) if parent else self.root, name)
        if not self.contains(real):
            raise PathOutsideWorkspace(path)
        return WorkspacePath(agent=agent, real=real)

    def _realpath(self, relative: str) -> str:
        """``os.path.realpath(root/relative)`` for a normalised ``relative`` (no '.', '..', '//').

        The root is resolved once, at start-up, so only the agent's own components are looked at:
        one lstat each instead of one for every component of the root too. At the first symlink the
        rest is left to ``os.path.realpath``, which follows links exactly; a component that does not
        exist ends the walk and the rest is joined as is, as ``realpath`` does.
        """
        real = self.root
        parts = relative.split("/")
        for index, name in enumerate(parts):
            candidate = f"{real}/{name}" if real != "/" else f"/{name}"
            try:
                is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
            except OSError:
                return os.path.join(candidate, *parts[index + 1 :])
            if is_link:
                return os.path.realpath(os.path.join(candidate, *parts[index + 1 :]))
            real = candidate
        return real

    def contains(self, real: str) -> bool:
        """Whether the real path ``real`` is the root or below it."""
        return real == self.root or real.startswith(self.root.rstrip("/") + "/")

    def to_agent(self, real: str) -> str:
        """The agent-visible form of a real path inside the root."""
        if real == self.root:
            return VIRTUAL_ROOT
        return VIRTUAL_ROOT + "/" + os.path.relpath(real, self.root)

    def verify_fd(self, fd: int, agent: str) -> None:
        """Re-check after opening: the descriptor must refer to a file inside the root."""
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: the O_NOFOLLOW open is the remaining guard
            return
        if not self.contains(target):
            raise PathOutsideWorkspace(agent)
