"""The file worker: the ``filesystem.*`` operations of one API key, in a process of that key's uid.

The gateway (``_fs_client.py``) starts it with the key's uid and the workspace group, no other
group, a clean environment, its own session and, where configured, its own cgroup, exactly as it
starts the key's ``process.run`` commands::

    python3 -I -B -c BOOTSTRAP PACKAGE_DIR WORKSPACE_ROOT MAX_WRITE_BYTES

It reads requests on stdin and answers on stdout (``_fs_wire.py``); it runs each operation of
``_fs_ops.REQUESTS`` (the code the gateway runs without workers) on one of its threads, ``stat``
inline, and exits at EOF once the operations under way are done. Whatever the descriptor walk
might let through, the kernel checks every file access against the key's credentials, which cannot
reach the gateway's state directory.

It makes itself non-dumpable first, so that the agent's own processes (same uid) cannot ptrace it or
open its ``/proc/PID/fd``; they can still signal it, and anything the worker sends is checked by the
gateway anyway. Importing only the standard library and ``_fs_ops``, ``workspace`` and ``errors``,
it starts in milliseconds with any ``python3``; a guard refuses the rest (the database, the agent
state, pydantic) so that no later import drags them in unnoticed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.abc
import importlib.machinery
import os
import sys
import threading
import types
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import _fs_wire as wire

if TYPE_CHECKING:
    from ._fs_ops import Request
    from .workspace import Workspace

#: Operations one worker runs at once; the gateway sends no more than this many at a time.
MAX_IN_FLIGHT = 8
#: Bound of a request's header: its paths, which came in one frame of the agent's (a few MiB at most).
MAX_REQUEST_HEADER = 64 << 20

#: Modules the worker must never import (and packages, with everything below them).
REFUSED = (
    "sqlite3",
    "_sqlite3",
    "pydantic",
    "pydantic_core",
    "kruxos_gateway.storage",
    "kruxos_gateway.state",
    "kruxos_gateway.approvals",
    "kruxos_gateway.policy",
    "kruxos_gateway.transports",
    "kruxos_gateway.config",
    "kruxos_gateway.core",
)

_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if any(fullname == name or fullname.startswith(name + ".") for name in REFUSED):
            raise ImportError(f"the file worker does not import {fullname}")
        return None


def keep_out() -> None:
    """Refuse :data:`REFUSED` to every later import (``errors`` builds wire objects, with pydantic,
    only in ``to_info``, which the gateway calls, never the worker)."""
    sys.meta_path.insert(0, _Refuse())


def _harden(libc: ctypes.CDLL) -> None:
    """Out of reach of the agent's ptrace and /proc (same uid), and no privileges ever again."""
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _keep_freed_memory(libc: ctypes.CDLL) -> None:
    """Serve file contents (up to 16 MiB) from the heap and keep what they free (up to 32 MiB).

    In a process this small glibc gives each freed MiB back to the kernel at once, and faults it in
    again for the next read: 1 MiB took ~600 µs to read instead of ~60. Idle workers exit anyway.
    """
    mallopt = getattr(libc, "mallopt", None)  # glibc's
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 16 << 20)
        mallopt(_M_TRIM_THRESHOLD, 32 << 20)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Worker:
    """Runs the requests read from ``fd_in`` and writes their answers to ``fd_out``."""

    def __init__(self, ws: Workspace, requests: dict[str, Request], fd_in: int, fd_out: int) -> None:
        from ..errors import GatewayError  # after keep_out(): see there

        self.ws = ws
        self.requests = requests
        self.fd_in = fd_in
        self.fd_out = fd_out
        self._gateway_error = GatewayError
        self._lock = threading.Lock()

    def serve(self, max_write_bytes: int) -> None:
        reader = wire.FrameReader(MAX_REQUEST_HEADER, max_write_bytes)
        with ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="fs") as pool:
            while chunk := os.read(self.fd_in, 1 << 20):
                for request_id, header, raw in reader.feed(chunk):
                    request = wire.parse_header(header)
                    if request.get("op") == "stat":  # ~20 µs: a thread hop would double it
                        self.run(request_id, request, raw)
                    else:
                        pool.submit(self.run, request_id, request, raw)

    def run(self, request_id: int, request: dict[str, Any], data: bytes) -> None:
        try:
            head, raw = wire.frame(request_id, *self._answer(request, data))
        except Exception as exc:  # a bug: the gateway answers internal_error, naming only the type
            head, raw = wire.frame(
                request_id, {"error": {"class": "InternalError", "message": type(exc).__name__}}
            )
        with self._lock:
            _write_all(self.fd_out, head)
            if raw:
                _write_all(self.fd_out, raw)

    def _answer(self, request: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            result, raw = self.requests[request["op"]](self.ws, request["args"], data)
        except self._gateway_error as exc:
            failure = {
                "class": type(exc).__name__,
                "message": exc.message,
                "recovery": [list(pair) for pair in exc.recovery],
                "details": exc.details,
            }
            return {"error": failure}, b""
        if request["op"] == "list":  # the gateway adds each entry's path back
            result["entries"] = [{k: v for k, v in e.items() if k != "path"} for e in result["entries"]]
        return {"ok": result}, raw


def main(argv: Sequence[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    _harden(libc)
    _keep_freed_memory(libc)
    keep_out()
    from . import _fs_ops
    from .workspace import Workspace

    root, max_write_bytes = argv
    for fd in (0, 1):  # 1 MiB reads and writes in one go, not sixteen (the default pipe holds 64 KiB)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    Worker(Workspace(root), _fs_ops.REQUESTS, 0, 1).serve(int(max_write_bytes))
    return 0


#: What ``python3 -I -c`` runs: ``-I`` ignores the environment and the current directory, so the
#: package comes from the directory the gateway names (argv[1]), and from nowhere else.
BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from kruxos_gateway.capabilities.fs_worker import main; sys.exit(main(sys.argv[2:]))"
)
