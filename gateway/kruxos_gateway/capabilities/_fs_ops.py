"""Blocking filesystem operations behind the ``filesystem.*`` capabilities.

Every path is walked beneath the workspace by ``Workspace.locate``, which holds the descriptor of
the final component's parent; every operation is done relative to that descriptor and never follows
the final name (``O_NOFOLLOW``, ``follow_symlinks=False``, ``O_CREAT|O_EXCL`` temporary files), so
a symlink swapped in at any step after the walk cannot lead it out of the workspace.

They run where ``_fs_client.py`` puts them, always as the :data:`REQUESTS` below: in the gateway's
threads, or in the calling key's file worker (``fs_worker.py``), a process of that key's uid. The
worker imports this module, so it imports nothing beyond the standard library, ``workspace`` and
``errors`` (nothing of the database or the agent state).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from typing import Any, Protocol

from ..errors import (
    AlreadyExists,
    ExecutionFailed,
    InvalidInput,
    IsADirectory,
    NotADirectory,
    NotFound,
    PathOutsideWorkspace,
    PermissionDenied,
    TooLarge,
)
from ..timestamps import iso_ms_of
from .workspace import VIRTUAL_ROOT, Location, Workspace, dir_mode_beneath, file_mode_beneath, wire_name

MAX_LIST_ENTRIES = 10_000


@contextlib.contextmanager
def os_errors(agent: str) -> Iterator[None]:
    """Translate ``OSError`` into the capability error types of docs/protocol.md."""
    try:
        yield
    except FileNotFoundError:
        raise NotFound(
            f"{agent} does not exist",
            recovery=[("list_directory", "call filesystem.list on the parent directory to see what exists")],
            details={"path": agent},
        ) from None
    except FileExistsError:
        raise AlreadyExists(
            f"{agent} already exists",
            recovery=[("choose_other_path", "pick another path, or pass overwrite=true")],
            details={"path": agent},
        ) from None
    except NotADirectoryError:
        raise NotADirectory(
            f"{agent} (or one of its parents) is not a directory",
            recovery=[("check_path", "call filesystem.stat to check what the path is")],
            details={"path": agent},
        ) from None
    except IsADirectoryError:
        raise IsADirectory(
            f"{agent} is a directory",
            recovery=[("use_list", "call filesystem.list for a directory")],
            details={"path": agent},
        ) from None
    except PermissionError:
        raise PermissionDenied(
            f"permission denied for {agent}",
            recovery=[
                (
                    "check_permissions",
                    "the user file work runs as (this key's own uid, or the gateway's) cannot access "
                    "this path; choose another one",
                )
            ],
            details={"path": agent},
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink swapped in after resolution
            raise PathOutsideWorkspace(agent) from None
        if exc.errno == errno.ENOTEMPTY:
            raise ExecutionFailed(
                f"{agent} is a directory that is not empty",
                recovery=[("pass_recursive", "pass recursive=true to delete it with its contents")],
                details={"path": agent},
            ) from None
        raise ExecutionFailed(
            f"{agent}: {exc.strerror or exc}", details={"path": agent, "errno": exc.errno}
        ) from None


def too_large(agent: str, size: int, limit: int, what: str) -> TooLarge:
    return TooLarge(
        f"{agent} is {size} bytes, over the {what} limit of {limit} bytes",
        recovery=[("use_smaller_file", f"keep files under {limit} bytes, or split them")],
        details={"path": agent, "size": size, "limit": limit},
    )


def file_type(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def _open_at(loc: Location, flags: int) -> int:
    """Open the final component relative to its parent's descriptor, never through a symlink."""
    return os.open(loc.name or ".", flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=loc.parent_fd)


def read(ws: Workspace, path: str, encoding: str, max_bytes: int) -> dict[str, Any]:
    return encode_read(*read_bytes(ws, path, max_bytes), encoding)


def read_bytes(ws: Workspace, path: str, max_bytes: int) -> tuple[str, bytes]:
    """The agent path and content of a regular file of at most ``max_bytes``."""
    agent = ws.agent_path(path)
    with os_errors(agent), ws.locate(agent) as loc:
        # O_NONBLOCK: opening a FIFO must not hang the worker thread.
        fd = _open_at(loc, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError
            if not stat.S_ISREG(st.st_mode):
                raise ExecutionFailed(f"{agent} is not a regular file")
            if st.st_size > max_bytes:
                raise too_large(agent, st.st_size, max_bytes, "read")
            chunks = []
            remaining = max_bytes + 1
            while remaining > 0 and (chunk := os.read(fd, min(remaining, 1 << 20))):
                chunks.append(chunk)
                remaining -= len(chunk)
            data = b"".join(chunks)
        finally:
            os.close(fd)
    if len(data) > max_bytes:  # grew since fstat
        raise too_large(agent, len(data), max_bytes, "read")
    return agent, data


def encode_read(agent: str, data: bytes, encoding: str) -> dict[str, Any]:
    """``filesystem.read``'s result: ``data`` as UTF-8 text (``execution_failed`` if it is not) or
    base64."""
    if encoding == "base64":
        content = base64.b64encode(data).decode("ascii")
    else:
        try:
            content = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ExecutionFailed(
                f"{agent} is not valid UTF-8 text",
                recovery=[("use_base64", 'read it again with encoding="base64"')],
                details={"path": agent},
            ) from None
    return {"path": agent, "content": content, "encoding": encoding, "size": len(data)}


def decode_content(content: str, encoding: str) -> bytes:
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(
                "content", "input 'content' is not valid base64", "pass base64 text, or use encoding='utf-8'"
            ) from None
    return content.encode("utf-8", errors="surrogatepass")


def _fsync_dir(dir_fd: int) -> None:
    """fsync a directory held as an ``O_PATH`` descriptor (which cannot be synced itself)."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lstat_at(loc: Location) -> os.stat_result | None:
    try:
        return os.stat(loc.name, dir_fd=loc.parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _temporary_file(parent_fd: int) -> tuple[int, str]:
    """A new, empty, private file beside the target: ``O_CREAT|O_EXCL`` never opens an existing name."""
    while True:
        name = f".kruxos-{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent_fd,
            )
        except FileExistsError:
            continue
        return fd, name


def write(
    ws: Workspace,
    path: str,
    data: bytes,
    *,
    create_parents: bool,
    overwrite: bool,
    max_bytes: int,
) -> dict[str, Any]:
    agent = ws.agent_path(path)
    if len(data) > max_bytes:
        raise too_large(agent, len(data), max_bytes, "write")
    if agent == VIRTUAL_ROOT:
        raise IsADirectory("/workspace is a directory", details={"path": agent})
    with os_errors(agent), ws.locate(agent, create_parents=create_parents) as loc:
        if loc.is_root:  # a symlink to the root
            raise IsADirectoryError
        existing = _lstat_at(loc)
        if existing is not None:
            if stat.S_ISDIR(existing.st_mode):
                raise IsADirectoryError
            if not overwrite:
                raise FileExistsError
        # A replaced file keeps its permission bits, never its setuid, setgid or sticky bits: a copy of
        # a program the agent planted must not become a setuid program of the gateway's user. A new
        # file follows its directory (group-writable in the shared workspace), whatever our umask.
        if existing is not None and stat.S_ISREG(existing.st_mode):
            mode = stat.S_IMODE(existing.st_mode) & 0o777
        else:
            mode = file_mode_beneath(loc.parent_fd)
        # Atomic: write a temporary file in the same directory, fsync, then rename over the target,
        # both names relative to the parent's descriptor.
        fd, tmp = _temporary_file(loc.parent_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, loc.name, src_dir_fd=loc.parent_fd, dst_dir_fd=loc.parent_fd)
            else:
                # link() fails if the target appeared meanwhile: never clobbers.
                os.link(
                    tmp, loc.name, src_dir_fd=loc.parent_fd, dst_dir_fd=loc.parent_fd, follow_symlinks=False
                )
                os.unlink(tmp, dir_fd=loc.parent_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=loc.parent_fd)
            raise
        _fsync_dir(loc.parent_fd)
    return {"path": agent, "size": len(data)}


def entry_path(agent_dir: str, name: str) -> str:
    """The agent path of the entry ``name`` (as :func:`wire_name` writes it) of a listed directory."""
    return f"{agent_dir.rstrip('/')}/{name}"


def _entry(agent_dir: str, disk: str, st: os.stat_result) -> dict[str, Any]:
    name = wire_name(disk)
    return {
        "name": name,
        "path": entry_path(agent_dir, name),
        "type": file_type(st.st_mode),
        "size": st.st_size,
        "modified": iso_ms_of(st.st_mtime),
    }


def list_dir(ws: Workspace, path: str) -> dict[str, Any]:
    agent = ws.agent_path(path)
    with os_errors(agent), ws.locate(agent) as loc:
        fd = _open_at(loc, os.O_RDONLY | os.O_DIRECTORY)
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
                    entries.append(_entry(agent, entry.name, st))
        finally:
            os.close(fd)
    entries.sort(key=lambda e: e["name"])
    return {"path": agent, "entries": entries, "truncated": truncated}


def stat_path(ws: Workspace, path: str) -> dict[str, Any]:
    agent = ws.agent_path(path)
    with os_errors(agent), ws.locate(agent, follow_final=False) as loc:
        target = None
        if loc.is_root:
            st = os.stat(loc.parent_fd)
        else:
            st = os.stat(loc.name, dir_fd=loc.parent_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = wire_name(os.readlink(loc.name, dir_fd=loc.parent_fd))
    return {
        "path": agent,
        "name": os.path.basename(agent) or "workspace",
        "type": file_type(st.st_mode),
        "size": st.st_size,
        "modified": iso_ms_of(st.st_mtime),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "symlink_target": target,
    }


def _refuse_root(agent: str, what: str) -> PermissionDenied:
    return PermissionDenied(
        f"the workspace root itself cannot be {what}",
        recovery=[("act_on_contents", "act on the entries inside /workspace one by one")],
        details={"path": agent},
    )


def remove_at(parent_fd: int, name: str, *, recursive: bool = True) -> os.stat_result:
    """Remove ``name`` in ``parent_fd`` without following any symlink (``rmtree`` walks by descriptor)."""
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        if recursive:
            shutil.rmtree(name, dir_fd=parent_fd)
        else:
            os.rmdir(name, dir_fd=parent_fd)
    else:
        os.unlink(name, dir_fd=parent_fd)
    return st


def delete(ws: Workspace, path: str, recursive: bool) -> dict[str, Any]:
    agent = ws.agent_path(path)
    if agent == VIRTUAL_ROOT:
        raise PermissionDenied(
            "the workspace root itself cannot be deleted",
            recovery=[("delete_contents", "delete the entries inside /workspace one by one")],
            details={"path": agent},
        )
    with os_errors(agent), ws.locate(agent, follow_final=False) as loc:
        st = remove_at(loc.parent_fd, loc.name, recursive=recursive)
    return {"path": agent, "deleted": True, "type": file_type(st.st_mode)}


def mkdir(ws: Workspace, path: str, parents: bool) -> dict[str, Any]:
    agent = ws.agent_path(path)
    with os_errors(agent), ws.locate(agent, create_parents=parents) as loc:
        if loc.is_root:
            return {"path": agent, "created": False}
        try:
            os.mkdir(loc.name, dir_mode_beneath(loc.parent_fd), dir_fd=loc.parent_fd)
        except FileExistsError:
            existing = os.stat(loc.name, dir_fd=loc.parent_fd, follow_symlinks=False)
            if not parents or not stat.S_ISDIR(existing.st_mode):
                raise
            return {"path": agent, "created": False}
    return {"path": agent, "created": True}


def move(ws: Workspace, src: str, dst: str, *, overwrite: bool, create_parents: bool) -> dict[str, Any]:
    s_agent = ws.agent_path(src, "src")
    d_agent = ws.agent_path(dst, "dst")
    for agent in (s_agent, d_agent):
        if agent == VIRTUAL_ROOT:
            raise _refuse_root(agent, "moved")
    with contextlib.ExitStack() as stack:
        with os_errors(s_agent):
            s = stack.enter_context(ws.locate(s_agent, follow_final=False, input_name="src"))
            os.stat(s.name, dir_fd=s.parent_fd, follow_symlinks=False)
        with os_errors(d_agent):
            d = stack.enter_context(
                ws.locate(d_agent, follow_final=False, create_parents=create_parents, input_name="dst")
            )
            existing = _lstat_at(d)
            if existing is not None:
                if not overwrite:
                    raise FileExistsError
                if stat.S_ISDIR(existing.st_mode):
                    raise IsADirectoryError
            try:
                if overwrite:
                    os.rename(s.name, d.name, src_dir_fd=s.parent_fd, dst_dir_fd=d.parent_fd)
                else:
                    # renameat2(RENAME_NOREPLACE) has no binding: link() never clobbers; a directory
                    # (which cannot be linked) is renamed after the check above.
                    _rename_no_replace(s, d)
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    raise ExecutionFailed(
                        f"{s_agent} and {d_agent} are on different file systems",
                        recovery=[("copy_instead", "read the file and write it at the new path instead")],
                        details={"src": s_agent, "dst": d_agent},
                    ) from None
                raise
    return {"src": s_agent, "dst": d_agent}


_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def _rename_no_replace(s: Location, d: Location) -> None:
    """``renameat2(RENAME_NOREPLACE)``: fails with ``FileExistsError`` instead of replacing the target.

    Python has no binding for it. Where the C library or the file system lacks it, the target was
    checked just before: a name appearing in between is replaced, but only ever inside the workspace.
    """
    if _renameat2 is not None:
        result = _renameat2(
            s.parent_fd, os.fsencode(s.name), d.parent_fd, os.fsencode(d.name), _RENAME_NOREPLACE
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code), d.name)
    os.rename(s.name, d.name, src_dir_fd=s.parent_fd, dst_dir_fd=d.parent_fd)


# --- the operations as requests --------------------------------------------------------------------


class Request(Protocol):
    """One operation as both drivers run it: the workspace, the arguments (JSON values), the raw
    bytes of a write; returns the result and the raw bytes of a read."""

    def __call__(
        self, ws: Workspace, args: dict[str, Any], data: bytes, /
    ) -> tuple[dict[str, Any], bytes]: ...


def _read_request(ws: Workspace, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    agent, content = read_bytes(ws, args["path"], args["max_bytes"])
    return {"path": agent, "size": len(content)}, content


def _write_request(ws: Workspace, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    result = write(
        ws,
        args["path"],
        data,
        create_parents=args["create_parents"],
        overwrite=args["overwrite"],
        max_bytes=args["max_bytes"],
    )
    return result, b""


def _list_request(ws: Workspace, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    return list_dir(ws, args["path"]), b""


def _stat_request(ws: Workspace, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    return stat_path(ws, args["path"]), b""


def _delete_request(ws: Workspace, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    return delete(ws, args["path"], args["recursive"]), b""


def _mkdir_request(ws: Workspace, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    return mkdir(ws, args["path"], args["parents"]), b""


def _move_request(ws: Workspace, args: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
    result = move(
        ws, args["src"], args["dst"], overwrite=args["overwrite"], create_parents=args["create_parents"]
    )
    return result, b""


#: Every operation by the name the file worker's protocol gives it (``_fs_wire.py``).
REQUESTS: dict[str, Request] = {
    "read": _read_request,
    "write": _write_request,
    "list": _list_request,
    "stat": _stat_request,
    "delete": _delete_request,
    "mkdir": _mkdir_request,
    "move": _move_request,
}
