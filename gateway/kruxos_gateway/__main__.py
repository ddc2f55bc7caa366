"""``python -m kruxos_gateway --config FILE``: run the gateway daemon until SIGTERM or SIGINT.

Exit codes: 0 after a clean shutdown, 2 for a bad configuration, policy file or command line (one
line on stderr, no traceback), 1 if the gateway cannot start (e.g. the port is taken). A policy file
that the configuration names must exist; only without ``policy.file`` may the shipped default apply.
SIGHUP reloads the policy file (a missing or broken one is refused, the policy in force stays); SIGUSR1
(from kruxosctl) makes it apply approval decisions and close the connections of revoked keys at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from . import compose, pidfile, serving
from .capabilities._cgroups import CommandCgroups
from .capabilities.base import RunAs
from .capabilities.process import resolve_cgroups, resolve_run_as
from .capabilities.workspace import Workspace
from .config import DEFAULT_CONFIG_PATH, GatewayConfig, ListenConfig, describe_validation_error, load_config
from .errors import ConfigError
from .logs import configure_logging, error_line
from .policy.rules import Policy, PolicyError, configured_policy
from .proxies.email.credentials import check_credentials
from .sdnotify import notify
from .storage.db import Database

log = logging.getLogger("kruxos_gateway")
PROG = "kruxos-gateway"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="The KruxOS gateway daemon.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="configuration file (YAML)")
    parser.add_argument("--host", help="listen on this address instead of listen.host")
    parser.add_argument(
        "--port", type=int, help="listen on this port instead of listen.port (0: any free port)"
    )
    parser.add_argument("--port-file", type=Path, help="once listening, write the real port to this file")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG level")
    return parser.parse_args(argv)


def _configure(args: argparse.Namespace) -> tuple[GatewayConfig, RunAs | None]:
    config = load_config(args.config)
    if args.host is not None or args.port is not None:
        try:
            listen = ListenConfig.model_validate(
                {
                    "host": args.host if args.host is not None else config.listen.host,
                    "port": args.port if args.port is not None else config.listen.port,
                }
            )
        except ValidationError as exc:
            raise ConfigError(f"command line: --{describe_validation_error(exc)}") from None
        config = config.model_copy(update={"listen": listen})
    run_as = resolve_run_as(config.process)
    check_credentials(config.email)  # refused here, as one line, before anything starts
    root = config.workspace.root
    if not root.is_dir():
        raise ConfigError(f"workspace.root: {root} is not a directory")
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"state_dir: cannot create {config.state_dir}: {exc.strerror}") from None
    return config, run_as


def write_port_file(path: Path, port: int) -> None:
    """Write ``port`` to ``path`` atomically (temp file in the same directory, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{port}\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def run(
    config: GatewayConfig,
    run_as: RunAs | None,
    port_file: Path | None = None,
    policy: Policy | None = None,
    cgroups: CommandCgroups | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return (SIGHUP reloads the policy)."""
    # Handlers first: a SIGTERM right after READY=1 must already drain, not kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    db = Database(config.db_path)
    await asyncio.to_thread(db.start)
    try:
        if policy is None:
            policy = configured_policy(config.policy, workspace=Workspace(config.workspace.root))
        parts = compose.build(config, db, policy, run_as=run_as, cgroups=cgroups)
        transports = serving.serve(parts)
        server = transports.server
        loop.add_signal_handler(signal.SIGHUP, parts.policy.reload_logged)

        # SIGUSR1: kruxosctl changed the database (an approval decided, a key revoked): look now.
        def database_changed() -> None:
            parts.approvals.wake()
            server.check_revocations()

        loop.add_signal_handler(signal.SIGUSR1, database_changed)
        await parts.start()
        pid_path = pidfile.write(config.state_dir)
        await server.start()
        host, port = server.address
        if port_file is not None:
            write_port_file(port_file, port)
        notify(f"READY=1\nSTATUS=listening on {host}:{port}")
        log.info(
            "listening on %s:%d (workspace %s, state %s)", host, port, config.workspace.root, config.state_dir
        )
        if run_as is None:
            log.warning(
                "process.run_as_user is not set: process.run runs commands as the gateway's user (uid %d)",
                os.getuid(),
            )
        log.info("%s", parts.files.describe())
        await stop.wait()
        notify("STOPPING=1\nSTATUS=draining")
        log.info("shutting down")
        await transports.shutdown()
        await parts.close()
        pidfile.remove(pid_path)
    finally:
        await db.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    configure_logging(logging.DEBUG if args.debug else logging.INFO)
    try:
        config, run_as = _configure(args)
        cgroups = resolve_cgroups(config.process)  # and leftovers of a gateway that stopped are swept
    except ConfigError as exc:
        print(error_line(PROG, str(exc), kind="config"), file=sys.stderr)
        return 2
    try:
        # Bound to the workspace: path rules see where a path's symlinks lead (policy.py, *Paths*).
        policy = configured_policy(config.policy, workspace=Workspace(config.workspace.root))
    except PolicyError as exc:
        print(error_line(PROG, str(exc), exc.hint, kind="policy"), file=sys.stderr)
        return 2
    try:
        asyncio.run(run(config, run_as, args.port_file, policy, cgroups))
    except OSError as exc:
        print(error_line(PROG, f"cannot start: {exc}"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
