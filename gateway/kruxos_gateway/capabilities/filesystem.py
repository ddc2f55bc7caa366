"""``filesystem.*``: read, write, list, stat, delete, mkdir and move inside /workspace.

The handlers name the operation (``_fs_ops.REQUESTS``) and its arguments; a ``FileWork`` runs it, in
the gateway's threads or in the calling key's file worker (``_fs_client.py``), and hands back the
result, which is the same either way.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Literal

from pydantic import Field

from . import _fs_ops as ops
from ._fs_client import FileWork
from .base import Capability, Context, define
from .inputs import Inputs

_PATH_NOTE = "an absolute path under /workspace, or a path relative to /workspace"
_ENCODING = '"utf-8" for text (the default) or "base64" for binary data.'
Encoding = Literal["utf-8", "base64"]


class ReadInputs(Inputs):
    path: str = Field(description=f"The file to read: {_PATH_NOTE}.")
    encoding: Encoding = Field("utf-8", description=_ENCODING)


class WriteInputs(Inputs):
    path: str = Field(description=f"The file to write: {_PATH_NOTE}.")
    content: str = Field(description="The new contents.")
    encoding: Encoding = Field("utf-8", description=_ENCODING)
    create_parents: bool = Field(True, description="Create missing parent directories (default true).")
    overwrite: bool = Field(
        True, description="Replace an existing file (default true); false fails with already_exists."
    )


class ListInputs(Inputs):
    path: str = Field("/workspace", description=f"The directory to list (default /workspace): {_PATH_NOTE}.")


class StatInputs(Inputs):
    path: str = Field(
        description=f"The path to describe: {_PATH_NOTE}. A symlink is described, not followed."
    )


class DeleteInputs(Inputs):
    path: str = Field(description=f"The path to delete: {_PATH_NOTE}. A symlink is deleted, not its target.")
    recursive: bool = Field(False, description="Delete a directory with everything in it (default false).")


class MkdirInputs(Inputs):
    path: str = Field(description=f"The directory to create: {_PATH_NOTE}.")
    parents: bool = Field(
        True, description="Create missing parents and accept an existing directory (default true)."
    )


class MoveInputs(Inputs):
    src: str = Field(description=f"What to move: {_PATH_NOTE}.")
    dst: str = Field(
        description=f"Where to move it (the new path, not a directory to move into): {_PATH_NOTE}."
    )
    overwrite: bool = Field(False, description="Replace an existing file at dst (default false).")
    create_parents: bool = Field(True, description="Create missing parent directories of dst (default true).")


_definition = functools.partial(define, "filesystem")


_ENTRY = "objects with name, path, type (file|directory|symlink|other), size (bytes), modified (ISO 8601 UTC)"

_READ = _definition(
    "read",
    ["safe", "read-only"],
    "Read a file inside the workspace.",
    "When you need the contents of a file: text as UTF-8, anything else with encoding=base64.",
    ReadInputs,
    [
        ("path", "string", "The file's path as /workspace/..."),
        ("content", "string", "The file's contents, as text or base64."),
        ("encoding", "string", '"utf-8" or "base64", as requested.'),
        ("size", "integer", "The file's size in bytes."),
    ],
    "read",
)

_WRITE = _definition(
    "write",
    ["write"],
    "Write a file inside the workspace, atomically (readers see the old or the new content).",
    "When you need to create or replace a file. Parent directories are created by default.",
    WriteInputs,
    [
        ("path", "string", "The written file's path as /workspace/..."),
        ("size", "integer", "Bytes written."),
    ],
    "write",
)

_LIST = _definition(
    "list",
    ["safe", "read-only"],
    "List the entries of a directory inside the workspace.",
    "When you need to know which files and directories exist; sorted by name, not recursive.",
    ListInputs,
    [
        ("path", "string", "The listed directory as /workspace/..."),
        ("entries", "array", f"The entries: {_ENTRY}."),
        (
            "truncated",
            "boolean",
            f"True if the directory has more than {ops.MAX_LIST_ENTRIES} entries.",
        ),
    ],
    "read",
)

_STAT = _definition(
    "stat",
    ["safe", "read-only"],
    "Describe one file, directory or symlink inside the workspace without reading it.",
    "When you need to know whether a path exists, what it is, its size or modification time.",
    StatInputs,
    [
        ("path", "string", "The path as /workspace/..."),
        ("name", "string", "The last component of the path."),
        ("type", "string", "file, directory, symlink or other."),
        ("size", "integer", "Size in bytes."),
        ("modified", "string", "Last modification time, ISO 8601 UTC."),
        ("mode", "string", "Permission bits in octal, e.g. 0644."),
        ("symlink_target", "string", "For a symlink, what it points to; otherwise null."),
    ],
    "read",
)

_DELETE = _definition(
    "delete",
    ["write", "destructive"],
    "Delete a file, symlink or directory inside the workspace.",
    "When a file or directory is no longer needed. A non-empty directory needs recursive=true.",
    DeleteInputs,
    [
        ("path", "string", "The deleted path as /workspace/..."),
        ("deleted", "boolean", "Always true."),
        ("type", "string", "What was deleted: file, directory, symlink or other."),
    ],
    "write",
)

_MKDIR = _definition(
    "mkdir",
    ["write"],
    "Create a directory inside the workspace.",
    "When you need an empty directory (filesystem.write creates missing parents itself).",
    MkdirInputs,
    [
        ("path", "string", "The directory as /workspace/..."),
        ("created", "boolean", "False if it already existed."),
    ],
    "write",
)

_MOVE = _definition(
    "move",
    ["write"],
    "Move or rename a file or directory inside the workspace.",
    "When you need to rename a file or move it to another directory of the workspace.",
    MoveInputs,
    [
        ("src", "string", "The old path as /workspace/..."),
        ("dst", "string", "The new path as /workspace/..."),
    ],
    "write",
)


#: Content up to this size is encoded on the event loop (~30 µs for base64); larger on a thread.
_ENCODE_INLINE_BYTES = 64 << 10


def capabilities(files: FileWork) -> list[Capability]:
    """The ``filesystem.*`` capabilities, their file work done by ``files``: in the gateway's threads,
    or in the calling key's file worker, as its uid (``_fs_client.py``)."""

    async def read(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        args = {"path": inputs["path"], "max_bytes": ctx.config.filesystem.max_read_bytes}
        result, content = await files.run(ctx, "read", args)
        if len(content) > _ENCODE_INLINE_BYTES:
            return await asyncio.to_thread(ops.encode_read, result["path"], content, inputs["encoding"])
        return ops.encode_read(result["path"], content, inputs["encoding"])

    async def write(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        data = ops.decode_content(inputs["content"], inputs["encoding"])
        args = {
            "path": inputs["path"],
            "create_parents": inputs["create_parents"],
            "overwrite": inputs["overwrite"],
            "max_bytes": ctx.config.filesystem.max_write_bytes,
        }
        return (await files.run(ctx, "write", args, data))[0]

    async def list_dir(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        return (await files.run(ctx, "list", {"path": inputs["path"]}))[0]

    async def stat(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        return (await files.run(ctx, "stat", {"path": inputs["path"]}))[0]

    async def delete(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        return (await files.run(ctx, "delete", {"path": inputs["path"], "recursive": inputs["recursive"]}))[0]

    async def mkdir(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        return (await files.run(ctx, "mkdir", {"path": inputs["path"], "parents": inputs["parents"]}))[0]

    async def move(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        args = {k: inputs[k] for k in ("src", "dst", "overwrite", "create_parents")}
        return (await files.run(ctx, "move", args))[0]

    return [
        Capability(_READ, read, ReadInputs),
        Capability(_WRITE, write, WriteInputs),
        Capability(_LIST, list_dir, ListInputs),
        Capability(_STAT, stat, StatInputs),
        Capability(_DELETE, delete, DeleteInputs),
        Capability(_MKDIR, mkdir, MkdirInputs),
        Capability(_MOVE, move, MoveInputs),
    ]
