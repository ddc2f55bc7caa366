"""Confinement of agent paths to the workspace.

Agents always address the workspace as ``/workspace/...`` (or relative to it), whatever its real
root on disk. A path is normalised lexically, then walked beneath the real root one component at a
time, each step relative to the descriptor of the directory before it and opened with
``O_NOFOLLOW``: a symlink is read and its target walked the same way, beneath the root (``..`` past
the root, or an absolute target outside it, is ``path_outside_workspace``). This is the semantics
of ``openat2(RESOLVE_BENEATH)``, done by hand because Python has no binding for it.

Because every step holds the descriptor of the directory it came from, a directory swapped for a
symlink after it was checked cannot redirect the operation: :meth:`Workspace.locate` hands the
caller the descriptor of the final component's parent and the final name, and every file operation
is done relative to that descriptor (``dir_fd=``) and without following the final name
(``O_NOFOLLOW``, ``follow_symlinks=False``). Nothing is looked up twice by name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInput, PathOutsideWorkspace

VIRTUAL_ROOT = "/workspace"
#: Symlinks followed in one resolution, as the kernel's own limit (MAXSYMLINKS).
MAX_SYMLINKS = 40

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ANY_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class WorkspacePath:
    """One path, as the agent sees it and as it is on disk (symlinks resolved)."""

    agent: str
    real: str

    @property
    def is_root(self) -> bool:
        return self.agent == VIRTUAL_ROOT


@dataclass(frozen=True)
class Location:
    """Where an operation acts: the final ``name`` in the directory open as ``parent_fd``.

    ``name`` is empty for the workspace root itself (then ``parent_fd`` is the root). ``real`` is the
    path on disk as it was walked, for messages and records only: never reopen it by name.
    """

    agent: str
    parent_fd: int
    name: str
    real: str

    @property
    def is_root(self) -> bool:
        return self.name == ""


_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")


def wire_name(name: str) -> str:
    """A file name as agents see it: itself if it is UTF-8, else escaped so that it can be sent back.

    ``os`` hands us names that are not UTF-8 with their bad bytes as lone surrogates (PEP 383), which
    no JSON parser on the way to the agent accepts. Such a name comes out with each bad byte written
    ``\\xHH`` and each backslash doubled; :func:`disk_name` turns that text back into the name.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(name).replace(b"\\", b"\\\\")
        return raw.decode("utf-8", "backslashreplace")
    return name


def disk_name(component: str) -> str | None:
    """The name on disk that ``component`` is the :func:`wire_name` of, if it is such an escape."""
    if "\\" not in component:
        return None

    def unescape(match: re.Match[str]) -> str:
        text = match.group(1)
        return "\\" if text == "\\" else os.fsdecode(bytes([int(text[1:], 16)]))

    name = _ESCAPE.sub(unescape, component)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name  # only an escape if it stands for a name that is not UTF-8
    return None


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
        """The canonical form of an agent path: where it leads now, symlinks resolved beneath the root.

        With ``follow_final=False`` a symlink as the last component is kept as is (to stat, list,
        delete or move the link itself); every directory above it is still resolved. A component that
        does not exist ends the lookup and the rest is joined as is. For naming things (policy, the
        cwd of a command, records) only: operations use :meth:`locate`.
        """
        agent = self.agent_path(path, input_name)
        walk = _Walk(self, agent, input_name, follow_final=follow_final, strict=False)
        try:
            names, final = walk.run()
        finally:
            walk.close()
        real = self._join(names, final)
        return WorkspacePath(agent=agent, real=real)

    @contextlib.contextmanager
    def locate(
        self,
        path: str,
        *,
        follow_final: bool = True,
        create_parents: bool = False,
        input_name: str = "path",
        dir_mode: int | None = None,
    ) -> Iterator[Location]:
        """Walk ``path`` beneath the root and yield its parent's descriptor, closed afterwards.

        Every directory above the final name must exist (``FileNotFoundError``) and be a directory
        (``NotADirectoryError``), unless ``create_parents``: then missing ones are made, each with
        ``mkdir(dir_fd=)``, with ``dir_mode`` (by default the mode of the directory it is made in).
        """
        agent = self.agent_path(path, input_name)
        walk = _Walk(
            self,
            agent,
            input_name,
            follow_final=follow_final,
            strict=True,
            create_parents=create_parents,
            dir_mode=dir_mode,
        )
        try:
            names, final = walk.run()
            yield Location(agent=agent, parent_fd=walk.fds[-1], name=final, real=self._join(names, final))
        finally:
            walk.close()

    def _join(self, names: list[str], final: str) -> str:
        parts = [*names, final] if final else names
        return posixpath.join(self.root, *parts) if parts else self.root

    def contains(self, real: str) -> bool:
        """Whether the real path ``real`` is the root or below it."""
        return real == self.root or real.startswith(self.root.rstrip("/") + "/")

    def to_agent(self, real: str) -> str:
        """The agent-visible form of a real path inside the root."""
        if real == self.root:
            return VIRTUAL_ROOT
        return VIRTUAL_ROOT + "/" + os.path.relpath(real, self.root)

    def link_parts(self, target: str) -> list[str] | None:
        """The components, from the root, of an absolute symlink target; ``None`` if outside the root.

        Agents' own links say ``/workspace/...``; links made on disk name the real root. Both are
        accepted, normalised lexically (a ``..`` in an absolute target cannot climb out either way).
        """
        normalised = posixpath.normpath(target)
        for prefix in (self.root, VIRTUAL_ROOT):
            if normalised == prefix:
                return []
            if normalised.startswith(prefix.rstrip("/") + "/"):
                return normalised[len(prefix.rstrip("/")) + 1 :].split("/")
        return None


class _Walk:
    """One resolution beneath the root: a stack of open directory descriptors, root first."""

    def __init__(
        self,
        ws: Workspace,
        agent: str,
        input_name: str,
        *,
        follow_final: bool,
        strict: bool,
        create_parents: bool = False,
        dir_mode: int | None = None,
    ) -> None:
        self.ws = ws
        self.agent = agent
        self.input_name = input_name
        self.follow_final = follow_final
        self.strict = strict
        self.create_parents = create_parents
        self.dir_mode = dir_mode
        self.fds: list[int] = [os.open(ws.root, _DIR_FLAGS)]
        self.names: list[str] = []  # the components the descriptors above the root stand for

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())

    def _outside(self) -> PathOutsideWorkspace:
        return PathOutsideWorkspace(self.agent)

    def _up(self) -> None:
        if not self.names:
            raise self._outside()
        self.names.pop()
        if len(self.fds) > len(self.names) + 1:  # past a missing component names have no descriptor
            os.close(self.fds.pop())

    def run(self) -> tuple[list[str], str]:
        """Walk every component; return the directory names above the final one, and the final name."""
        relative = self.agent[len(VIRTUAL_ROOT) :].lstrip("/")
        pending: deque[str] = deque(relative.split("/") if relative else [])
        links = 0
        missing = False  # non-strict: past a missing component the rest is joined lexically
        while pending:
            name = pending.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                self._up()
                continue
            last = not any(p not in ("", ".") for p in pending)
            if missing:
                if last:
                    return self.names, name
                self.names.append(name)
                continue
            name = self._existing_name(name)
            if last and not self.follow_final:
                return self.names, name
            try:
                fd = os.open(name, _ANY_FLAGS, dir_fd=self.fds[-1])
            except FileNotFoundError:
                if last:
                    return self.names, name
                if self.create_parents:
                    self._make_dir(name)
                    pending.appendleft(name)
                    continue
                if self.strict:
                    raise
                missing = True
                self.names.append(name)
                continue
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode) and not last:
                self.fds.append(fd)  # an O_PATH descriptor of the directory: the next step's dir_fd
                self.names.append(name)
                continue
            try:
                # readlinkat(fd, ""): the target of the very link that was opened, not of a name.
                target = os.readlink("", dir_fd=fd) if stat.S_ISLNK(mode) else None
            finally:
                os.close(fd)
            if target is not None:
                links += 1
                if links > MAX_SYMLINKS:
                    raise self._loop()
                pending.extendleft(reversed(self._splice(target)))
                continue
            if last:
                return self.names, name
            if self.strict:
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name)
            missing = True  # as realpath: a file in the middle is joined, the open fails later
            self.names.append(name)
        if self.names:  # ended on a directory reached through '..' in a link: name it from its parent
            final = self.names.pop()
            if len(self.fds) > len(self.names) + 1:
                os.close(self.fds.pop())
            return self.names, final
        return self.names, ""

    def _existing_name(self, name: str) -> str:
        """``name``, or the name that it is the escaped form of when only that one exists."""
        alternative = disk_name(name)
        if alternative is None:
            return name
        try:
            os.stat(name, dir_fd=self.fds[-1], follow_symlinks=False)
        except FileNotFoundError:
            return alternative
        except OSError:
            pass
        return name

    def _splice(self, target: str) -> list[str]:
        """The components to walk instead of a symlink; an absolute target restarts at the root."""
        if not target.startswith("/"):
            return target.split("/")
        parts = self.ws.link_parts(target)
        if parts is None:
            raise self._outside()
        while len(self.fds) > 1:
            os.close(self.fds.pop())
        self.names.clear()
        return parts

    def _make_dir(self, name: str) -> None:
        parent = self.fds[-1]
        mode = self.dir_mode if self.dir_mode is not None else dir_mode_beneath(parent)
        with contextlib.suppress(FileExistsError):  # made meanwhile: the retried open looks at it
            os.mkdir(name, mode, dir_fd=parent)

    def _loop(self) -> InvalidInput:
        return InvalidInput(
            self.input_name,
            f"{self.agent} has too many levels of symbolic links",
            "check the symlinks on this path with filesystem.stat: one of them loops",
        )


def dir_mode_beneath(parent_fd: int) -> int:
    """The permission bits for a new directory in ``parent_fd``: those of the parent.

    The workspace is a setgid directory shared with the agents' own user (``2770``): a new directory
    inherits the setgid bit from the kernel and, with these bits, stays writable by the group. The
    special bits are never passed: ``RestrictSUIDSGID=`` refuses a ``mkdir`` that asks for them.
    """
    return stat.S_IMODE(os.fstat(parent_fd).st_mode) & 0o777


def file_mode_beneath(parent_fd: int) -> int:
    """The permission bits for a new file in ``parent_fd``: the parent's, without execute."""
    return dir_mode_beneath(parent_fd) & 0o666
