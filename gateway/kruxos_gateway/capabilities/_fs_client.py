"""Where the ``filesystem.*`` operations run: in the gateway's threads, or in a worker process per key.

::

    FileWork              what the handlers call: run(ctx, op, args, data) -> (result, raw bytes)
    ├── InProcessFiles    the gateway's own threads, as the gateway's user: no per-key uids
    └── FileWorkers       one fs_worker process per API key, as that key's uid (process.key_uid_base)

Both run the same operations, ``_fs_ops.REQUESTS``, confined by the descriptor walk. In a worker
they also run with the credentials of the key's own ``process.run`` commands (its uid, the
workspace group, nothing else), so a file capability can do no more than the agent's commands
could, and the gateway's state directory is out of its reach even where the walk had a bug.

A worker runs as the agent's uid, which the agent's commands share: they can kill it or stop it,
and, had they a way in, make it send anything. So nothing it sends is trusted: frames are bounded
before they are kept (``_fs_wire.py``); an answer is parsed by the request that waits for it and
checked against a strict model (types, sizes, choices); the paths it names must be those asked
about; an error must be one of a closed list of classes. Only bytes pass from a worker to the
gateway: no descriptors, no pickles. A worker that breaks the protocol, exits, or does not answer
within ``filesystem.worker_timeout`` is killed: the calls it had in flight fail with
``execution_failed`` and the key's next call starts a new worker.

Each key has its own worker, pipes and bound of calls in flight (``fs_worker.MAX_IN_FLIGHT``), so
no key's calls wait behind another's. A worker starts with its key's first call and ends after
``filesystem.worker_idle_timeout`` without one, or when the gateway stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import (
    AlreadyExists,
    ExecutionFailed,
    GatewayError,
    InternalError,
    InvalidInput,
    IsADirectory,
    NotADirectory,
    NotFound,
    PathOutsideWorkspace,
    PermissionDenied,
    TooLarge,
)
from . import _fs_ops as ops
from . import _fs_wire as wire
from . import fs_worker
from ._cgroups import WORKER_PREFIX, CommandCgroups
from ._spawn import (
    KILL_GRACE_SECONDS,
    Credentials,
    apply_rlimits,
    clean_environment,
    credentials,
    has_rlimits,
    release_cgroup,
)

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from .base import Context, RunAs

log = logging.getLogger(__name__)

#: Bound of an answer's header: a ``list`` of 10,000 entries with long escaped names fits.
MAX_ANSWER_HEADER = 32 << 20
#: Answers with a larger header (long listings) are checked on a thread, not on the event loop.
_CHECK_INLINE_BYTES = 64 << 10
#: The directory that holds the ``kruxos_gateway`` package, which the worker imports from.
PACKAGE_DIR = str(Path(__file__).resolve().parents[2])


class FileWork(Protocol):
    """Runs one file operation of ``_fs_ops.REQUESTS`` for the calling key."""

    def describe(self) -> str:
        """Where file work runs, for the start-up log."""
        ...

    async def run(
        self, ctx: Context, op: str, args: dict[str, Any], data: bytes = b""
    ) -> tuple[dict[str, Any], bytes]: ...

    async def close(self) -> None:
        """After the last call: stop what runs file work."""
        ...


class InProcessFiles:
    """File work in the gateway's threads, as the gateway's user: the walk is its only confinement."""

    def describe(self) -> str:
        return (
            "file work runs in the gateway process, as its user (no process.key_uid_base): "
            "the descriptor walk beneath the workspace is all that confines it"
        )

    async def run(
        self, ctx: Context, op: str, args: dict[str, Any], data: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        request = ops.REQUESTS[op]
        if op == "stat":
            # Inline, not in a thread: resolving and lstat-ing one path on the appliance's local disk
            # takes ~20 µs (metadata is cached), while a thread hop costs ~50 µs more and two wake-ups,
            # which made it the largest part of a trivial invocation (bench/gateway_bench.py).
            # Anything that reads or walks file contents stays in a thread.
            return request(ctx.workspace, args, data)
        return await asyncio.to_thread(request, ctx.workspace, args, data)

    async def close(self) -> None:
        return None


def file_work(config: GatewayConfig, run_as: RunAs | None, cgroups: CommandCgroups | None) -> FileWork:
    """Workers where each key has a uid of its own; else the gateway's threads."""
    if run_as is None or run_as.key_uids is None:
        return InProcessFiles()
    return FileWorkers(config, cgroups)


# --- the worker's command ------------------------------------------------------------------------


def _reachable_by_anyone(path: str, bits: int) -> bool:
    """Whether a uid of no group but the workspace's may reach ``path`` (``other`` permission bits)."""
    try:
        real = Path(os.path.realpath(path))
        if any(not os.stat(parent).st_mode & stat.S_IXOTH for parent in real.parents):
            return False
        return os.stat(real).st_mode & bits == bits
    except OSError:
        return False


def worker_python() -> str:
    """The gateway's own interpreter if any uid may run it, else the system's ``python3``.

    The worker needs nothing but the standard library and this package, so any Python 3.11 serves;
    a gateway run from a virtual environment in a private home directory (tests, hosts) cannot lend
    its own to the keys' uids.
    """
    for candidate in (sys.executable, "/usr/bin/python3"):
        if candidate and _reachable_by_anyone(candidate, stat.S_IXOTH):
            return candidate
    return sys.executable


def worker_command(python: str, root: str, max_write_bytes: int) -> list[str]:
    """The worker's argv (``-I``: no environment variable, user site or current directory counts)."""
    return [python, "-I", "-B", "-c", fs_worker.BOOTSTRAP, PACKAGE_DIR, root, str(max_write_bytes)]


# --- what a worker may answer --------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _not_dots(name: str) -> str:
    if name in (".", ".."):
        raise ValueError("not a name of a directory entry")
    return name


_Size = Annotated[int, Field(ge=0, lt=2**63)]
_Int = Annotated[int, Field(ge=-(2**63), lt=2**63)]
_Time = Annotated[str, Field(pattern=r"^[0-9]{1,4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$")]
_Mode = Annotated[str, Field(pattern=r"^[0-7]{4}$")]
# One component as workspace.wire_name writes it: at most 255 bytes, each escaped as \xHH at worst.
_Name = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^/]+$"), AfterValidator(_not_dots)]
_FileType = Literal["file", "directory", "symlink", "other"]


class _Read(_Strict):
    path: str
    size: _Size


class _Write(_Strict):
    path: str
    size: _Size


class _Entry(_Strict):
    name: _Name
    type: _FileType
    size: _Size
    modified: _Time


class _List(_Strict):
    path: str
    entries: Annotated[list[_Entry], Field(max_length=ops.MAX_LIST_ENTRIES)]
    truncated: bool


class _Stat(_Strict):
    path: str
    name: str
    type: _FileType
    size: _Size
    modified: _Time
    mode: _Mode
    symlink_target: Annotated[str, Field(max_length=16384)] | None


class _Delete(_Strict):
    path: str
    deleted: Literal[True]
    type: _FileType


class _Mkdir(_Strict):
    path: str
    created: bool


class _Move(_Strict):
    src: str
    dst: str


_RESULTS: dict[str, type[_Strict]] = {
    "read": _Read,
    "write": _Write,
    "list": _List,
    "stat": _Stat,
    "delete": _Delete,
    "mkdir": _Mkdir,
    "move": _Move,
}
#: The inputs of each operation that are paths, which its answer must name as they were asked.
_PATHS: dict[str, tuple[str, ...]] = {"move": ("src", "dst")}

#: The errors a worker may report; the message, recovery and details are its own (the agent's).
_ERRORS: dict[str, type[GatewayError]] = {
    cls.__name__: cls
    for cls in (
        NotFound,
        AlreadyExists,
        NotADirectory,
        IsADirectory,
        PermissionDenied,
        PathOutsideWorkspace,
        TooLarge,
        ExecutionFailed,
        InvalidInput,
    )
}


class _Failure(_Strict):
    cls: Literal[
        "NotFound",
        "AlreadyExists",
        "NotADirectory",
        "IsADirectory",
        "PermissionDenied",
        "PathOutsideWorkspace",
        "TooLarge",
        "ExecutionFailed",
        "InvalidInput",
        "InternalError",
    ] = Field(alias="class")
    message: str
    recovery: Annotated[
        list[Annotated[list[str], Field(min_length=2, max_length=2)]], Field(max_length=8)
    ] = []
    details: Annotated[dict[str, str | _Int | bool | None], Field(max_length=16)] = {}

    def error(self, op: str) -> GatewayError:
        if self.cls == "InternalError":
            return InternalError(f"filesystem.{op} failed in the key's file worker ({self.message[:100]})")
        cls = _ERRORS[self.cls]
        error = cls.__new__(cls)  # the classes' own __init__ build messages; this one was built already
        GatewayError.__init__(
            error, self.message, recovery=[(a, d) for a, d in self.recovery], details=dict(self.details)
        )
        if isinstance(error, InvalidInput):
            error.input = str(self.details.get("input", ""))
        return error


class _Reply(_Strict):
    ok: dict[str, Any] | None = None
    error: _Failure | None = None

    @model_validator(mode="after")
    def _one(self) -> _Reply:
        if (self.ok is None) == (self.error is None):
            raise ValueError("an answer is either ok or an error")
        return self


class _Malformed(Exception):
    """The worker's answer is not one it could have given: it is lying, or broken."""


def _check(
    op: str, asked: dict[str, str], data: bytes, header: bytes, raw: bytes
) -> tuple[dict[str, Any], bytes] | GatewayError:
    """The result (or the error) a worker's answer stands for; ``_Malformed`` if it is not valid."""
    try:
        reply = _Reply.model_validate(wire.parse_header(header))
        if reply.error is not None:
            if raw:
                raise _Malformed("an error with content")
            return reply.error.error(op)
        result = _RESULTS[op].model_validate(reply.ok)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _Malformed(f"{'.'.join(map(str, first['loc'])) or 'answer'}: {first['msg']}") from None
    except ValueError as exc:
        raise _Malformed(str(exc)) from None
    for name, path in asked.items():
        if getattr(result, name) != path:
            raise _Malformed(f"it names {name} {getattr(result, name)!r}, not {path!r}")
    if isinstance(result, _Read) and result.size != len(raw):
        raise _Malformed(f"it read {len(raw)} bytes and says {result.size}")
    if raw and not isinstance(result, _Read):
        raise _Malformed(f"content with an answer to {op}")
    if isinstance(result, _Write) and result.size != len(data):
        raise _Malformed(f"it was given {len(data)} bytes and says it wrote {result.size}")
    answer = result.model_dump()
    if isinstance(result, _List):
        answer["entries"] = [
            {"name": e.name, "path": ops.entry_path(result.path, e.name), **e.model_dump(exclude={"name"})}
            for e in result.entries
        ]
    return answer, raw


# --- the workers ---------------------------------------------------------------------------------


class WorkerGone(Exception):
    """The worker ended before it answered (the message says how)."""


def _interrupted(op: str, why: str) -> ExecutionFailed:
    return ExecutionFailed(
        f"filesystem.{op} did not complete: this key's file worker {why}, and was stopped; "
        "the next call starts a new one",
        recovery=[
            ("retry", "call it again"),
            (
                "check_result",
                "a write, delete, mkdir or move may or may not have happened: check with filesystem.stat",
            ),
        ],
        details={"worker": why},
    )


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen: nobody awaits the calls of a cancelled request."""
    if not future.cancelled():
        future.exception()


class FileWorkers:
    """One file worker per API key, started on its first call (see the module docstring)."""

    def __init__(
        self, config: GatewayConfig, cgroups: CommandCgroups | None, python: str | None = None
    ) -> None:
        self.config = config
        self.cgroups = cgroups
        self.python = python or worker_python()
        self._workers: dict[str, _Worker] = {}
        self._starting: dict[str, asyncio.Future[_Worker]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._credentials: dict[str, Credentials] = {}
        self._alive: set[_Worker] = set()  # started and not yet reaped
        self._reaping: set[asyncio.Future[None]] = set()
        self._closed = False

    def describe(self) -> str:
        where = f"one worker process per key, as the key's uid and the workspace group ({self.python})"
        if not _reachable_by_anyone(self.python, stat.S_IXOTH) or not _reachable_by_anyone(
            PACKAGE_DIR, stat.S_IROTH | stat.S_IXOTH
        ):
            return f"file work runs in {where}; the keys' uids cannot run it: file calls will fail"
        return f"file work runs in {where}"

    def pid(self, key_name: str) -> int | None:
        """The process id of ``key_name``'s worker, if one is running (diagnostics and tests)."""
        worker = self._workers.get(key_name)
        return worker.pid if worker is not None and worker.usable else None

    def calls_in_flight(self, key_name: str) -> int:
        """How many calls ``key_name``'s worker has been sent and not answered."""
        worker = self._workers.get(key_name)
        return len(worker.pending) if worker is not None else 0

    async def run(
        self, ctx: Context, op: str, args: dict[str, Any], data: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        # The paths as the answer must name them; an invalid one fails here, before any process.
        asked = {name: ctx.workspace.agent_path(args[name], name) for name in _PATHS.get(op, ("path",))}
        limit = self.config.filesystem.max_write_bytes
        if len(data) > limit:  # the worker would refuse the frame: say here what it would have said
            raise ops.too_large(asked["path"], len(data), limit, "write")
        slots = self._slots.setdefault(ctx.key_name, asyncio.Semaphore(fs_worker.MAX_IN_FLIGHT))
        await slots.acquire()
        try:
            worker = await self._worker(ctx)
            future = worker.send(op, args, data, self.config.filesystem.worker_timeout)
        except BaseException:
            slots.release()
            raise
        # The slot is the worker's until it answers, even if this request is cancelled meanwhile.
        future.add_done_callback(lambda _: slots.release())
        try:
            header, raw = await asyncio.shield(future)
        except WorkerGone as gone:
            raise _interrupted(op, str(gone)) from None
        try:
            if len(header) > _CHECK_INLINE_BYTES:
                checked = await asyncio.to_thread(_check, op, asked, data, header, raw)
            else:
                checked = _check(op, asked, data, header, raw)
        except _Malformed as exc:
            worker.fail(f"sent a malformed answer to {op} ({exc})")
            raise _interrupted(op, "sent a malformed answer") from None
        if isinstance(checked, InternalError):
            log.warning("file worker of key %s: %s", ctx.key_name, checked.message)
        if isinstance(checked, GatewayError):
            raise checked
        return checked

    async def _worker(self, ctx: Context) -> _Worker:
        key = ctx.key_name
        worker = self._workers.get(key)
        if worker is not None and worker.usable:
            return worker
        starting = self._starting.get(key)
        if starting is None:
            if self._closed:
                raise ExecutionFailed("the gateway is stopping: no file worker is started")
            starting = asyncio.ensure_future(self._start(ctx))
            self._starting[key] = starting
            starting.add_done_callback(functools.partial(self._started, key))
        # Shielded: a worker started for a request that is cancelled meanwhile is still kept.
        return await asyncio.shield(starting)

    def _started(self, key: str, starting: asyncio.Future[_Worker]) -> None:
        if self._starting.get(key) is starting:
            del self._starting[key]
        if not starting.cancelled() and starting.exception() is None and starting.result().usable:
            self._workers[key] = starting.result()

    async def _start(self, ctx: Context) -> _Worker:
        identity = self._credentials.get(ctx.key_name)
        if identity is None:
            found = await credentials(ctx)
            assert found is not None, "file workers run only with process.key_uid_base"
            identity = self._credentials[ctx.key_name] = found
        fs = self.config.filesystem
        loop = asyncio.get_running_loop()
        try:
            _, worker = await loop.subprocess_exec(
                lambda: _Worker(self, ctx.key_name, fs.max_read_bytes, fs.worker_idle_timeout),
                *worker_command(self.python, ctx.workspace.root, fs.max_write_bytes),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # not the gateway's: the agent could write to the journal
                cwd="/",
                env=clean_environment("/"),
                start_new_session=True,  # its own session and process group, killed as a whole
                **identity.popen_kwargs(),
            )
            self._alive.add(worker)
        except OSError as exc:
            log.warning("cannot start the file worker of key %s: %s", ctx.key_name, exc)
            raise ExecutionFailed(
                f"cannot start this key's file worker: {exc.strerror or exc}",
                recovery=[("ask_operator", "ask the operator to look at the gateway's log")],
            ) from None
        try:
            if self.cgroups is not None:
                worker.cgroup = self.cgroups.create(WORKER_PREFIX)
                self.cgroups.add(worker.cgroup, worker.pid)
            elif has_rlimits(self.config.process):
                apply_rlimits(log, worker.pid, self.config.process)
        except OSError as exc:
            worker.fail(f"could not be given its cgroup ({exc.strerror or exc})")
            raise ExecutionFailed(f"cannot start this key's file worker: {exc.strerror or exc}") from None
        log.info("file worker of key %s started (pid %d, uid %d)", ctx.key_name, worker.pid, identity.uid)
        return worker

    def _forget(self, worker: _Worker) -> None:
        if self._workers.get(worker.key) is worker:
            del self._workers[worker.key]

    def _reap(self, worker: _Worker) -> None:
        reaping = asyncio.ensure_future(worker.reap())
        self._reaping.add(reaping)
        reaping.add_done_callback(self._reaping.discard)
        reaping.add_done_callback(lambda _: self._alive.discard(worker))

    async def close(self) -> None:
        """Stop every worker: EOF on its stdin, SIGKILL after a grace period; wait until all are gone."""
        self._closed = True
        if self._starting:
            await asyncio.gather(*self._starting.values(), return_exceptions=True)
        for worker in list(self._workers.values()):
            worker.retire()
        await asyncio.gather(*(worker.reaped for worker in self._alive), return_exceptions=True)


class _Worker(asyncio.SubprocessProtocol):
    """One worker process: its requests in flight, by id, and the frames it sends back."""

    def __init__(self, pool: FileWorkers, key: str, max_read_bytes: int, idle_timeout: float) -> None:
        self.pool = pool
        self.key = key
        self.cgroup: Path | None = None
        self.pending: dict[int, asyncio.Future[tuple[bytes, bytes]]] = {}
        self.usable = True  # given new requests
        self.ended = False
        self._loop = asyncio.get_running_loop()
        self._reader = wire.FrameReader(MAX_ANSWER_HEADER, max_read_bytes)
        self._ids = itertools.count(1)
        self._idle_timeout = idle_timeout
        self._idle: asyncio.TimerHandle | None = None
        self._retired = False
        self._exited: asyncio.Future[None] = self._loop.create_future()
        self.reaped: asyncio.Future[None] = self._loop.create_future()
        self._transport: asyncio.SubprocessTransport | None = None

    @property
    def transport(self) -> asyncio.SubprocessTransport:
        assert self._transport is not None
        return self._transport

    @property
    def pid(self) -> int:
        return self.transport.get_pid()

    # -- asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self._transport = transport
        self._idle = self._loop.call_later(self._idle_timeout, self.retire)  # until its first call

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd != 1 or self.ended:
            return
        try:
            frames = self._reader.feed(data)
        except wire.FrameError as exc:
            self.fail(f"broke the protocol: {exc}")
            return
        for request_id, header, raw in frames:
            future = self.pending.pop(request_id, None)
            if future is None:
                self.fail(f"answered request {request_id}, which it was not sent or answered before")
                return
            if not future.done():
                future.set_result((header, raw))
        if not self.pending and self.usable and self._idle is None:
            self._idle = self._loop.call_later(self._idle_timeout, self.retire)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self.fail("ended" if not self._retired else "stopped")
        elif exc is not None:
            self.fail(f"stopped reading its requests ({exc})")

    def process_exited(self) -> None:
        self._exited.set_result(None)
        # Its answers may still be on their way through the pipe: the end of its output ends it.
        self._loop.call_later(KILL_GRACE_SECONDS, self.fail, f"exited ({self.transport.get_returncode()})")

    # -- what the pool does with it

    def send(
        self, op: str, args: dict[str, Any], data: bytes, timeout: float
    ) -> asyncio.Future[tuple[bytes, bytes]]:
        assert self.usable
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        request_id = next(self._ids)
        future: asyncio.Future[tuple[bytes, bytes]] = self._loop.create_future()
        future.add_done_callback(_retrieve)
        self.pending[request_id] = future
        head, raw = wire.frame(request_id, {"op": op, "args": args}, data)
        stdin = self.transport.get_pipe_transport(0)
        assert isinstance(stdin, asyncio.WriteTransport)
        stdin.write(head)
        if raw:
            stdin.write(raw)
        timer = self._loop.call_later(timeout, self._expire, request_id, timeout)
        future.add_done_callback(lambda _: timer.cancel())
        return future

    def _expire(self, request_id: int, timeout: float) -> None:
        if request_id in self.pending:
            self.fail(f"did not answer within {timeout:g} s")

    def retire(self) -> None:
        """No more requests: EOF on its stdin; it exits once it has answered what it holds."""
        if not self.usable:
            return
        self.usable = False
        self._retired = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.pool._forget(self)
        stdin = self.transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()
        self._loop.call_later(KILL_GRACE_SECONDS, self.fail, "did not exit at the end of its requests")

    def fail(self, why: str) -> None:
        """The end of the worker, however it comes: fail what it holds, kill it, let the pool reap it."""
        if self.ended:
            return
        self.ended = True
        self.usable = False
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.pending:
            log.warning(
                "file worker of key %s (pid %d) %s; %d call(s) in flight failed",
                self.key,
                self.pid,
                why,
                len(self.pending),
            )
        elif not self._retired:
            log.info("file worker of key %s (pid %d) %s", self.key, self.pid, why)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(WorkerGone(why))
        self.pending.clear()
        self.kill()
        self.pool._forget(self)
        self.pool._reap(self)

    def kill(self) -> None:
        if self.transport.get_returncode() is None:  # not reaped: its pid is still its own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                CommandCgroups.kill(self.cgroup)

    async def reap(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), KILL_GRACE_SECONDS)
        try:
            self.transport.close()
            if self.cgroup is not None:
                await release_cgroup(self.cgroup)
        finally:
            self.reaped.set_result(None)
