"""Blocking filesystem operations behind the ``filesystem.*`` capabilities (run in worker threads).

Every path is confined by ``Workspace.resolve``; files are opened with ``O_NOFOLLOW`` and the
opened descriptor is re-checked, so a symlink swapped in after the check is refused.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from .. import store
from ..errors import CapabilityFailed, InvalidInput, PathOutsideWorkspace
from ..workspace import Workspace, WorkspacePath

MAX_LIST_ENTRIES = 10_000
NEW_FILE_MODE = 0o644


@contextlib.contextmanager
def os_errors(agent: str) -> Iterator[None]:
    """Translate ``OSError`` into the capability error types of docs/protocol.md."""
    try:
        yield
    except FileNotFoundError:
        raise CapabilityFailed(
            "not_found",
            f"{agent} does not exist",
            recovery=[("list_directory", "call filesystem.list on the parent directory to see what exists")],
            details={"path": agent},
        ) from None
    except FileExistsError:
        raise CapabilityFailed(
            "already_exists",
            f"{agent} already exists",
            recovery=[("choose_other_path", "pick another path, or pass overwrite=true")],
            details={"path": agent},
        ) from None
    except NotADirectoryError:
        raise CapabilityFailed(
            "not_a_directory",
            f"{agent} (or one of its parents) is not a directory",
            recovery=[("check_path", "call filesystem.stat to check what the path is")],
            details={"path": agent},
        ) from None
    except IsADirectoryError:
        raise CapabilityFailed(
            "is_a_directory",
            f"{agent} is a directory",
            recovery=[("use_list", "call filesystem.list for a directory")],
            details={"path": agent},
        ) from None
    except PermissionError:
        raise CapabilityFailed(
            "permission_denied",
            f"permission denied for {agent}",
            recovery=[
                ("check_permissions", "the gateway's user cannot access this path; choose another one")
            ],
            details={"path": agent},
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink swapped in after resolution
            raise PathOutsideWorkspace(agent) from None
        if exc.errno == errno.ENOTEMPTY:
            raise CapabilityFailed(
                "execution_failed",
                f"{agent} is a directory that is not empty",
                recovery=[("pass_recursive", "pass recursive=true to delete it with its contents")],
                details={"path": agent},
            ) from None
        raise CapabilityFailed(
            "execution_failed", f"{agent}: {exc.strerror or exc}", details={"path": agent, "errno": exc.errno}
        ) from None


def too_large(agent: str, size: int, limit: int, what: str) -> CapabilityFailed:
    return CapabilityFailed(
        "too_large",
        f"{agent} is {size} bytes, over the {what} limit of {limit} bytes",
        recovery=[("use_smaller_file", f"keep files under {limit} bytes, or split them")],
        details={"path": agent, "size": size, "limit": limit},
    )


def iso_time(timestamp: float) -> str:
    return store.iso_ms(datetime.fromtimestamp(timestamp, UTC))


def file_type(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def _open_checked(ws: Workspace, wp: WorkspacePath, flags: int) -> int:
    fd = os.open(wp.real, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        ws.verify_fd(fd, wp.agent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read(ws: Workspace, path: str, encoding: str, max_bytes: int) -> dict[str, Any]:
    wp = ws.resolve(path)
    with os_errors(wp.agent):
        # O_NONBLOCK: opening a FIFO must not hang the worker thread.
        fd = _open_checked(ws, wp, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError
            if not stat.S_ISREG(st.st_mode):
                raise CapabilityFailed("execution_failed", f"{wp.agent} is not a regular file")
            if st.st_size > max_bytes:
                raise too_large(wp.agent, st.st_size, max_bytes, "read")
            chunks = []
            remaining = max_bytes + 1
            while remaining > 0 and (chunk := os.read(fd, min(remaining, 1 << 20))):
                chunks.append(chunk)
                remaining -= len(chunk)
            data = b"".join(chunks)
        finally:
            os.close(fd)
    if len(data) > max_bytes:  # grew since fstat
        raise too_large(wp.agent, len(data), max_bytes, "read")
    if encoding == "base64":
        content = base64.b64encode(data).decode("ascii")
    else:
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CapabilityFailed(
                "execution_failed",
                f"{wp.agent} is not valid UTF-8 text",
                recovery=[("use_base64", 'read it again with encoding="base64"')],
                details={"path": wp.agent},
            ) from None
    return {"path": wp.agent, "content": content, "encoding": encoding, "size": len(data)}


def decode_content(content: str, encoding: str) -> bytes:
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                "content", "input 'content' is not valid base64", "pass base64 text, or use encoding='utf-8'"
            ) from None
    return content.encode("utf-8", errors="surrogatepass")


def _check_dir(ws: Workspace, real_dir: str, agent: str) -> None:
    """After creating directories: the real directory must still resolve to itself, inside the root."""
    if os.path.realpath(real_dir) != real_dir or not ws.contains(real_dir):
        raise PathOutsideWorkspace(agent)


def write(
    ws: Workspace,
    path: str,
    data: bytes,
    *,
    create_parents: bool,
    overwrite: bool,
    max_bytes: int,
) -> dict[str, Any]:
    wp = ws.resolve(path)
    if len(data) > max_bytes:
        raise too_large(wp.agent, len(data), max_bytes, "write")
    if wp.is_root:
        raise CapabilityFailed("is_a_directory", "/workspace is a directory", details={"path": wp.agent})
    parent = os.path.dirname(wp.real)
    with os_errors(wp.agent):
        if create_parents:
            os.makedirs(parent, exist_ok=True)
        _check_dir(ws, parent, wp.agent)
        try:
            existing: os.stat_result | None = os.lstat(wp.real)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                raise IsADirectoryError
            if not overwrite:
                raise FileExistsError
        mode = stat.S_IMODE(existing.st_mode) if existing is not None else NEW_FILE_MODE
        # Atomic: write a temp file in the same directory, fsync, then rename over the target.
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".kruxos-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, wp.real)
            else:
                os.link(tmp, wp.real)  # fails if the target appeared meanwhile: never clobbers
                os.unlink(tmp)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return {"path": wp.agent, "size": len(data)}


def _entry(agent_dir: str, name: str, st: os.stat_result) -> dict[str, Any]:
    agent = f"{agent_dir.rstrip('/')}/{name}"
    return {
        "name": name,
        "path": agent,
        "type": file_type(st.st_mode),
        "size": st.st_size,
        "modified": iso_time(st.st_mtime),
    }


def list_dir(ws: Workspace, path: str) -> dict[str, Any]:
    wp = ws.resolve(path)
    with os_errors(wp.agent):
        fd = _open_checked(ws, wp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            entries: list[dict[str, Any]] = []
            truncated = False
            with os.scandir(fd) as it:
                for entry in it:
                    if len(entries) >= MAX_LIST_ENTRIES:
                        truncated = True
                        break
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed while listing
                        continue
                    entries.append(_entry(wp.agent, entry.name, st))
        finally:
            os.close(fd)
    entries.sort(key=lambda e: e["name"])
    return {"path": wp.agent, "entries": entries, "truncated": truncated}


def stat_path(ws: Workspace, path: str) -> dict[str, Any]:
    wp = ws.resolve(path, follow_final=False)
    with os_errors(wp.agent):
        st = os.lstat(wp.real)
        result: dict[str, Any] = {
            "path": wp.agent,
            "name": os.path.basename(wp.agent) or "workspace",
            "type": file_type(st.st_mode),
            "size": st.st_size,
            "modified": iso_time(st.st_mtime),
            "mode": f"{stat.S_IMODE(st.st_mode):04o}",
            "symlink_target": None,
        }
        if stat.S_ISLNK(st.st_mode):
            result["symlink_target"] = os.readlink(wp.real)
    return result


def delete(ws: Workspace, path: str, recursive: bool) -> dict[str, Any]:
    wp = ws.resolve(path, follow_final=False)
    if wp.is_root:
        raise CapabilityFailed(
            "permission_denied",
            "the workspace root itself cannot be deleted",
            recovery=[("delete_contents", "delete the entries inside /workspace one by one")],
            details={"path": wp.agent},
        )
    with os_errors(wp.agent):
        st = os.lstat(wp.real)
        if stat.S_ISDIR(st.st_mode):
            if recursive:
                shutil.rmtree(wp.real)  # never follows symlinks (fd-based on Linux)
            else:
                os.rmdir(wp.real)
        else:
            os.unlink(wp.real)
    return {"path": wp.agent, "deleted": True, "type": file_type(st.st_mode)}


def mkdir(ws: Workspace, path: str, parents: bool) -> dict[str, Any]:
    wp = ws.resolve(path)
    with os_errors(wp.agent):
        if parents:
            created = not os.path.isdir(wp.real)
            os.makedirs(wp.real, exist_ok=True)
        else:
            os.mkdir(wp.real)
            created = True
        _check_dir(ws, wp.real, wp.agent)
    return {"path": wp.agent, "created": created}


def move(ws: Workspace, src: str, dst: str, *, overwrite: bool, create_parents: bool) -> dict[str, Any]:
    s = ws.resolve(src, follow_final=False, input_name="src")
    d = ws.resolve(dst, follow_final=False, input_name="dst")
    for wp in (s, d):
        if wp.is_root:
            raise CapabilityFailed(
                "permission_denied", "the workspace root itself cannot be moved", details={"path": wp.agent}
            )
    with os_errors(s.agent):
        os.lstat(s.real)
    with os_errors(d.agent):
        parent = os.path.dirname(d.real)
        if create_parents:
            os.makedirs(parent, exist_ok=True)
        _check_dir(ws, parent, d.agent)
        if os.path.lexists(d.real):
            if not overwrite:
                raise FileExistsError
            if os.path.isdir(d.real) and not os.path.islink(d.real):
                raise IsADirectoryError
        try:
            os.rename(s.real, d.real)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(s.real, d.real)
    return {"src": s.agent, "dst": d.agent}
