"""``process.run``: run a command in the workspace, in its own process group, with a timeout.

A process that ran is a successful invocation whatever its exit code; only a command that could not
be started at all is a failed result. On timeout the whole process group gets SIGTERM, then SIGKILL
after a grace period, and the output read so far is returned with ``timed_out: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from ..config import ProcessConfig
from ..core.models import CapabilityDefinition, OutputSpec
from ..errors import ConfigError, ExecutionFailed, InvalidInput, NotADirectory, NotFound, PermissionDenied
from ._cgroups import CommandCgroups, Limits
from ._spawn import (
    KILL_GRACE_SECONDS,
    apply_rlimits,
    clean_environment,
    credentials,
    has_rlimits,
    release_cgroup,
)
from .base import Capability, Context, RunAs
from .inputs import Inputs, declared
from .workspace import WorkspacePath


def resolve_run_as(config: ProcessConfig) -> RunAs | None:
    """Look up ``run_as_user``/``run_as_group`` once at start-up (``None``: run as the gateway)."""
    if config.run_as_user is None:
        if config.run_as_group is not None:
            raise ConfigError("process.run_as_group: needs process.run_as_user as well")
        return None
    try:
        user = pwd.getpwnam(config.run_as_user)
    except KeyError:
        raise ConfigError(f"process.run_as_user: no such user {config.run_as_user!r}") from None
    gid = user.pw_gid
    if config.run_as_group is not None:
        try:
            gid = grp.getgrnam(config.run_as_group).gr_gid
        except KeyError:
            raise ConfigError(f"process.run_as_group: no such group {config.run_as_group!r}") from None
    extra = tuple(g for g in os.getgrouplist(user.pw_name, gid) if g != gid)
    key_uids = None
    if config.key_uid_base is not None:
        if config.run_as_group is None:
            raise ConfigError(
                "process.key_uid_base: needs process.run_as_group, the group that every key's uid shares"
            )
        key_uids = (config.key_uid_base, config.key_uid_count)
    return RunAs(uid=user.pw_uid, gid=gid, extra_groups=extra, user=user.pw_name, key_uids=key_uids)


def resolve_cgroups(config: ProcessConfig) -> CommandCgroups | None:
    """The command cgroups ``process.cgroup_root`` asks for, checked at start-up (``ConfigError``)."""
    limits = Limits(memory_bytes=config.max_memory_bytes, tasks=config.max_tasks, cpus=config.max_cpus)
    return CommandCgroups.configured(config.cgroup_root, limits)


@dataclass
class _Capture:
    limit: int
    data: bytearray = field(default_factory=bytearray)
    total: int = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.total += len(chunk)
            room = self.limit - len(self.data)
            if room > 0:
                self.data += chunk[:room]

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    @property
    def truncated(self) -> bool:
        return self.total > self.limit


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@dataclass
class _Command:
    """A started command: its process, and the cgroup that holds it and all it starts, if any."""

    proc: asyncio.subprocess.Process
    cgroup: Path | None = None
    cgroups: CommandCgroups | None = None

    def signal(self, sig: signal.Signals) -> None:
        _signal_group(self.proc.pid, sig)
        if self.cgroup is not None:
            CommandCgroups.signal(self.cgroup, sig)

    def kill(self) -> None:
        _signal_group(self.proc.pid, signal.SIGKILL)
        if self.cgroup is not None:
            CommandCgroups.kill(self.cgroup)

    async def release(self) -> None:
        """Kill whatever the command left in its cgroup (daemons too) and remove the cgroup."""
        if self.cgroup is not None:
            await release_cgroup(self.cgroup)


async def _terminate_group(command: _Command) -> None:
    """SIGTERM the whole group (and cgroup), SIGKILL it after a grace period."""
    command.signal(signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(command.proc.wait(), KILL_GRACE_SECONDS)
    command.kill()
    await command.proc.wait()


async def _kill_now(command: _Command) -> None:
    """SIGKILL the whole group at once (the request was cancelled) and reap the process."""
    command.kill()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(command.proc.wait(), KILL_GRACE_SECONDS)


def _environment(ctx: Context, extra: dict[str, Any]) -> dict[str, str]:
    for name, value in extra.items():
        if not name or "=" in name or "\0" in name or (isinstance(value, str) and "\0" in value):
            raise InvalidInput(
                "env",
                f"env name {name!r} or its value is not usable",
                "use names without '=' or NUL bytes, and values without NUL bytes",
            )
        if not isinstance(value, str):
            raise InvalidInput(
                "env",
                f"env[{name!r}] must be a string",
                'pass env as an object of strings, e.g. {"DEBUG": "1"}',
            )
    env = clean_environment(ctx.workspace.root)  # the agent adds what it needs
    env.update(extra)
    return env


#: Run by /bin/sh in front of a gated command: wait for the gateway's word on stdin (a pipe), then
#: give the command /dev/null as stdin and become it. EOF (the gateway went away) runs nothing.
_GATE = 'read -r _ || exit 125; exec </dev/null; exec "$@"'


def _not_found(missing: str) -> NotFound:
    return NotFound(
        f"{missing} does not exist",
        recovery=[("check_command", "check the program name and cwd (a directory under /workspace)")],
        details={"path": missing},
    )


def _cannot_start(program: str) -> PermissionDenied:
    return PermissionDenied(f"permission denied starting {program}", details={"command": program})


def _check_program(program: str, cwd: WorkspacePath, path: str) -> None:
    """Behind the gate, /bin/sh starts whatever the name is: say here, as exec would, if it is not there."""
    found = shutil.which(program, path=path) if "/" not in program else os.path.join(cwd.real, program)
    if found is None or not os.path.exists(found):
        raise _not_found(program)
    if not os.access(found, os.X_OK):
        raise _cannot_start(program)


async def _run(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    command = inputs["command"]
    if isinstance(command, str):
        argv = ["/bin/sh", "-c", command]
    elif command:
        argv = list(command)
    else:
        raise InvalidInput(
            "command", "input 'command' is an empty array", 'pass e.g. ["ls", "-la"] or "ls -la"'
        )
    if any("\0" in arg for arg in argv):
        raise InvalidInput("command", "input 'command' contains a NUL byte", "remove the NUL byte")
    cwd = ctx.workspace.resolve(inputs["cwd"], input_name="cwd")
    env = _environment(ctx, inputs["env"] or {})
    limits = ctx.config.process
    timeout = inputs["timeout"] if inputs["timeout"] is not None else limits.default_timeout
    if not timeout > 0:  # also refuses NaN
        raise InvalidInput(
            "timeout", "input 'timeout' must be positive", f"pass seconds, at most {limits.max_timeout}"
        )
    timeout = min(float(timeout), limits.max_timeout)

    identity = await credentials(ctx)
    kwargs = identity.popen_kwargs() if identity is not None else {}
    cgroups = ctx.cgroups
    # A command that gets a cgroup or limits waits, before it runs anything, until it has them: a
    # command that forked at once could otherwise leave a child outside its cgroup.
    gated = cgroups is not None or has_rlimits(limits)
    gate_read = gate_write = -1
    spawn_argv = argv
    if gated:
        _check_program(argv[0], cwd, env["PATH"])
        gate_read, gate_write = os.pipe()
        spawn_argv = ["/bin/sh", "-c", _GATE, "kruxos-run", *argv]
    started = time.monotonic()
    spawn = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *spawn_argv,
            stdin=gate_read if gated else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd.real,
            env=env,
            start_new_session=True,  # its own session and process group, killed as a whole
            **kwargs,
        )
    )
    proc: asyncio.subprocess.Process | None = None
    try:
        # Shielded: if the request is cancelled mid-spawn, the process must still be found and killed.
        proc = await asyncio.shield(spawn)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await _kill_now(_Command(await spawn))
        raise
    except FileNotFoundError as exc:
        raise _not_found(cwd.agent if exc.filename == cwd.real else argv[0]) from None
    except NotADirectoryError:
        raise NotADirectory(f"cwd {cwd.agent} is not a directory") from None
    except PermissionError:
        raise _cannot_start(argv[0]) from None
    except OSError as exc:
        raise ExecutionFailed(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    finally:
        if gated:
            os.close(gate_read)
            if proc is None:  # nothing to let go: a child that did start reads EOF and runs nothing
                os.close(gate_write)

    command = _Command(proc)
    if gated:
        try:
            if cgroups is not None:
                command.cgroup = cgroups.create()
                cgroups.add(command.cgroup, proc.pid)
            else:
                apply_rlimits(ctx.log, proc.pid, limits)
            os.write(gate_write, b"go\n")
        except BaseException:
            await _kill_now(command)
            await command.release()
            raise
        finally:
            os.close(gate_write)
    try:
        return await _supervise(command, limits, timeout, started)
    finally:
        await command.release()


async def _supervise(
    command: _Command, limits: ProcessConfig, seconds: float, started: float
) -> dict[str, Any]:
    """Collect the output of a started command until it ends or its timeout kills it."""
    proc = command.proc
    assert proc.stdout is not None
    assert proc.stderr is not None
    out, err = _Capture(limits.max_output_bytes), _Capture(limits.max_output_bytes)
    readers = [asyncio.create_task(out.drain(proc.stdout)), asyncio.create_task(err.drain(proc.stderr))]
    exited = asyncio.create_task(proc.wait())
    timed_out = False
    try:
        # Done when the process has exited and every holder of its stdout/stderr has closed them.
        _, pending = await asyncio.wait([exited, *readers], timeout=seconds)
        if pending:
            timed_out = True
            await _terminate_group(command)
            _, pending = await asyncio.wait(readers, timeout=KILL_GRACE_SECONDS)
            for task in pending:  # a descendant that left the group still holds a pipe
                task.cancel()
    except asyncio.CancelledError:
        for task in [exited, *readers]:
            task.cancel()
        await _kill_now(command)
        raise
    return {
        "exit_code": proc.returncode,
        "stdout": out.text,
        "stderr": err.text,
        "stdout_truncated": out.truncated,
        "stderr_truncated": err.truncated,
        "timed_out": timed_out,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
    }


class RunInputs(Inputs):
    command: str | list[str] = Field(
        description='A shell command line ("ls -la") or an argv array (["ls", "-la"]).'
    )
    cwd: str = Field(
        "/workspace", description="The working directory, under /workspace (default /workspace)."
    )
    env: dict[str, Any] | None = Field(
        None, description="Extra environment variables (strings), added to PATH, LANG and HOME."
    )
    timeout: int | float | None = Field(
        None,
        description="Seconds before the process group is killed (default and maximum from the "
        "gateway configuration).",
    )


CAPABILITIES = [
    Capability(
        CapabilityDefinition(
            name="process.run",
            category="process",
            tags=["execute"],
            purpose="Run a command in the workspace and return its exit code and output.",
            when_to_use=(
                "When you need a program's effect or output (build, test, inspect). A string runs through "
                "/bin/sh -c; an array runs the program directly. A non-zero exit code is still a successful "
                "invocation: check exit_code."
            ),
            inputs=declared(RunInputs),
            outputs=[
                OutputSpec(
                    name="exit_code", type="integer", description="The exit code; -N if killed by signal N."
                ),
                OutputSpec(
                    name="stdout",
                    type="string",
                    description="Standard output (UTF-8, invalid bytes replaced).",
                ),
                OutputSpec(
                    name="stderr",
                    type="string",
                    description="Standard error (UTF-8, invalid bytes replaced).",
                ),
                OutputSpec(
                    name="stdout_truncated",
                    type="boolean",
                    description="True if stdout was cut at the limit.",
                ),
                OutputSpec(
                    name="stderr_truncated",
                    type="boolean",
                    description="True if stderr was cut at the limit.",
                ),
                OutputSpec(
                    name="timed_out", type="boolean", description="True if the timeout killed the process."
                ),
                OutputSpec(
                    name="duration_ms", type="number", description="Wall-clock run time in milliseconds."
                ),
            ],
            permission_tier="execute",
        ),
        _run,
        RunInputs,
    )
]
