"""``kruxosctl``: manage API keys and read the audit log and alerts of a KruxOS gateway.

It works on the gateway's SQLite database directly (``state_dir/gateway.db``). Run as root while
the state directory belongs to another user (the gateway's), it switches to that user first, so
the files it creates stay the gateway's. Errors are one line on stderr and exit code 2; ``--debug``
shows the traceback. Everything it prints from the database went through ``logs.escape``: agents
wrote much of it, and it must not drive the operator's terminal (escapes, bidi overrides, new lines).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from ..config import DEFAULT_CONFIG_PATH, load_config
from ..errors import ConfigError
from ..logs import error_line, escape
from ..pidfile import signal_gateway
from ..storage import store
from . import approvals as ctl_approvals
from . import mcp as ctl_mcp
from .output import CtlError, print_table

PROG = "kruxosctl"
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
FOLLOW_INTERVAL = 0.5


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Manage a KruxOS gateway: keys, audit log, alerts, policy, approvals."
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help="gateway configuration file")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = key_commands.add_parser("create", help="create a key; prints only the key on stdout")
    create.add_argument("name", help="a name for whoever uses the key, e.g. alice or build-agent")
    create.add_argument(
        "--output", type=Path, help="write the key to this file (mode 0600) instead of stdout"
    )
    create.add_argument(
        "--take-over",
        action="store_true",
        help="reuse the name of a revoked key: the new key inherits its persistent state and approvals",
    )
    rotate = key_commands.add_parser(
        "rotate", help="replace a live key by a new one that keeps its state; the old one stops working"
    )
    rotate.add_argument("name")
    rotate.add_argument(
        "--output", type=Path, help="write the new key to this file (mode 0600) instead of stdout"
    )
    key_commands.add_parser("list", help="list keys (never the keys themselves)")
    revoke = key_commands.add_parser(
        "revoke", help="revoke a key: its open connections are closed, its next handshake is refused"
    )
    revoke.add_argument("name")

    audit = commands.add_parser("audit", help="read the audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    tail = audit_commands.add_parser("tail", help="show the last invocations")
    tail.add_argument("-n", type=int, default=20, help="how many records (default 20)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")

    alerts = commands.add_parser("alerts", help="show the last alerts")
    alerts.add_argument("-n", type=int, default=20, help="how many alerts (default 20)")

    ctl_approvals.add_parsers(commands)
    ctl_mcp.add_parsers(commands)
    return parser


def _drop_privileges(state_dir: Path) -> None:
    """As root, become the owner of ``state_dir`` (the gateway's user) if it is not root."""
    if os.geteuid() != 0:
        return
    try:
        owner = state_dir.stat()
    except FileNotFoundError:
        return
    if owner.st_uid == 0:
        return
    try:
        user = pwd.getpwuid(owner.st_uid)
        os.initgroups(user.pw_name, owner.st_gid)
    except KeyError:
        os.setgroups([])
    os.setgid(owner.st_gid)
    os.setuid(owner.st_uid)


@contextlib.contextmanager
def _database(state_dir: Path) -> Iterator[sqlite3.Connection]:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        conn = store.connect(state_dir / "gateway.db")
    except (OSError, sqlite3.Error) as exc:
        raise CtlError(
            f"cannot open the database in {state_dir}: {exc}",
            "check state_dir in the configuration, and run as root or as the gateway's user",
        ) from exc
    try:
        yield conn
    except sqlite3.Error as exc:
        raise CtlError(
            f"database error: {exc}", "retry; if it persists, check the disk and permissions"
        ) from exc
    finally:
        conn.close()


def _open_output(path: Path) -> TextIO:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
    except OSError as exc:
        raise CtlError(f"cannot write {path}: {exc.strerror}", "choose a writable path for --output") from exc
    return os.fdopen(fd, "w")


def _keys_create(conn: sqlite3.Connection, name: str, output: TextIO | None, take_over: bool) -> None:
    try:
        key = store.create_key(conn, name, take_over=take_over)
    except store.KeyExists:
        raise CtlError(
            f"a live key named {name!r} already exists",
            f"revoke it first (kruxosctl keys revoke {name}), or replace it: kruxosctl keys rotate {name}",
        ) from None
    except store.KeyNameRetired:
        raise CtlError(
            f"a revoked key was named {name!r}, and its persistent state and approvals are filed under"
            " that name",
            f"choose another name, or pass --take-over to give the new key everything {name!r} had",
        ) from None
    _show_new_key(name, key, output, "created")


def _keys_rotate(conn: sqlite3.Connection, name: str, output: TextIO | None) -> None:
    key = store.rotate_key(conn, name)
    if key is None:
        raise CtlError(
            f"no live key named {name!r}", "kruxosctl keys list shows the keys and which are revoked"
        )
    _show_new_key(name, key, output, "rotated")


def _show_new_key(name: str, key: str, output: TextIO | None, done: str) -> None:
    if output is not None:
        with output:
            output.write(key + "\n")
        print(f"{done} key {name!r}; written to {output.name}", file=sys.stderr)
    else:
        print(key)
        print(f"{done} key {name!r}; it is shown only once: store it now", file=sys.stderr)


def _keys_list(conn: sqlite3.Connection) -> None:
    keys = store.list_keys(conn)
    if not keys:
        print("no keys yet; create one with: kruxosctl keys create NAME", file=sys.stderr)
        return
    rows = [("NAME", "CREATED", "LAST USED", "REVOKED")]
    rows += [(k.name, k.created_at, k.last_used_at or "never", k.revoked_at or "-") for k in keys]
    print_table(rows)


def _keys_revoke(conn: sqlite3.Connection, name: str) -> None:
    if not store.revoke_key(conn, name):
        raise CtlError(
            f"no live key named {name!r}", "kruxosctl keys list shows the keys and which are revoked"
        )


def _tell_gateway_revoked(state_dir: Path, name: str) -> None:
    if signal_gateway(state_dir, signal.SIGUSR1):
        closing = "its open connections are being closed"
    else:
        closing = (
            "no running gateway was signalled; a running one closes the key's connections within "
            f"{store.REVOCATION_CHECK_INTERVAL:g} s"
        )
    print(f"revoked key {name!r}: its next handshake is refused; {closing}", file=sys.stderr)


def _audit_line(r: store.AuditRecord) -> str:
    # The capability is the name the agent sent, even one that does not exist.
    return escape(
        f"{r.ts}  {r.key_name}  {r.capability}  {r.outcome}  {r.duration_ms:.1f}ms"
        f"  inputs={r.inputs_sha256[:16]}  {r.invocation_id}"
    )


def _audit_tail(conn: sqlite3.Connection, n: int, follow: bool) -> None:
    last_id = 0
    for record in store.tail_audit(conn, n):
        print(_audit_line(record))
        last_id = record.id or last_id
    if not follow:
        return
    if last_id == 0:
        row = conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()
        last_id = int(row[0])
    # Ctrl-C or SIGTERM ends --follow cleanly, even if SIGINT was ignored by whoever started us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            sys.stdout.flush()
            time.sleep(FOLLOW_INTERVAL)
            for record in store.tail_audit(conn, 1000, after_id=last_id):
                print(_audit_line(record))
                last_id = record.id or last_id


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _alerts(conn: sqlite3.Connection, n: int) -> None:
    for a in store.list_alerts(conn, n):
        print(escape(f"{a.ts}  {a.severity.upper():8}  {a.alert_id}  {a.key_name}  {a.title}: {a.message}"))


def run(args: argparse.Namespace) -> None:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CtlError(str(exc), "pass the gateway's configuration with --config FILE") from None
    if (
        (args.command == "keys" and args.keys_command in ("create", "rotate", "revoke"))
        or args.command == "mcp"
    ) and not KEY_NAME.fullmatch(args.name):
        raise CtlError(
            f"invalid key name {args.name!r}",
            "use 1-64 letters, digits, '.', '_', '-' or '@', starting with a letter or digit",
        )
    for option in ("n",):
        if getattr(args, option, 1) < 1:
            raise CtlError("-n must be at least 1")
    # Opened before dropping privileges: root may write where the gateway's user may not.
    output = _open_output(args.output) if getattr(args, "output", None) else None
    _drop_privileges(config.state_dir)
    if args.command in ("policy", "approvals"):
        if args.command == "policy":
            ctl_approvals.run_policy(config, args)
            return
        with _database(config.state_dir) as conn:
            ctl_approvals.run_approvals(conn, config, args)
        return
    with _database(config.state_dir) as conn:
        if args.command == "keys":
            # store functions never commit: each command that writes is one transaction.
            if args.keys_command == "create":
                with store.transaction(conn):
                    _keys_create(conn, args.name, output, args.take_over)
            elif args.keys_command == "list":
                _keys_list(conn)
            elif args.keys_command == "rotate":
                with store.transaction(conn):
                    _keys_rotate(conn, args.name, output)
                _tell_gateway_revoked(config.state_dir, args.name)
            else:
                with store.transaction(conn):
                    _keys_revoke(conn, args.name)
                # Committed: now the running gateway closes the key's open connections.
                _tell_gateway_revoked(config.state_dir, args.name)
        elif args.command == "mcp":
            with store.transaction(conn):
                entry = ctl_mcp.new_entry(conn, config, args)
            ctl_mcp.show(entry, args.name, output)  # once committed: the key in it works
            if args.rotate:
                _tell_gateway_revoked(config.state_dir, args.name)
        elif args.command == "audit":
            _audit_tail(conn, args.n, args.follow)
        else:
            _alerts(conn, args.n)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except CtlError as exc:
        if args.debug:
            raise
        print(error_line(PROG, exc.message, exc.hint), file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(
            error_line(PROG, f"{type(exc).__name__}: {exc}", "rerun with --debug for details"),
            file=sys.stderr,
        )
        return 2
    return 0
