"""``kruxosctl policy …`` and ``kruxosctl approvals …``: the operator's side of policy and approvals.

Decisions are written to the gateway's database in one transaction (with their audit records), then
the running gateway is told with a signal to the PID in ``state_dir/gateway.pid``: SIGUSR1 ("a
decision was made": it runs the approved invocation or pushes the rejection at once), SIGHUP
("reload the policy"). If the signal cannot be sent the decision still stands: the gateway's periodic
sweep (``policy.approval_poll_interval``) or its next start picks it up.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import signal
import sqlite3
import sys
from pathlib import Path

from . import approvals_store
from .approvals import initial_policy
from .capabilities import default_registry
from .config import GatewayConfig
from .ctl import CtlError, print_table
from .errors import GatewayError
from .pidfile import PIDFILE, signal_gateway
from .policy import PolicyError, shipped_default_text
from .store import transaction


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = commands.add_parser("policy", help="show, test and reload the policy")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    policy_commands.add_parser("show", help="print the policy in force (its file, or the shipped default)")
    policy_commands.add_parser("reload", help="check the policy file, then make the gateway load it (SIGHUP)")
    test = policy_commands.add_parser("test", help="show which rule decides an invocation, and why")
    test.add_argument("capability", help="e.g. process.run")
    test.add_argument(
        "inputs", nargs="*", metavar="NAME=VALUE", help="inputs; VALUE is JSON or a plain string"
    )
    test.add_argument("--key", default="agent", help="the API key name invoking it (default: agent)")

    approvals = commands.add_parser("approvals", help="list, show, approve and reject approvals")
    actions = approvals.add_subparsers(dest="approvals_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="approvals waiting for a decision (or --all recent ones)")
    listing.add_argument("--all", action="store_true", help="also decided ones (the last -n)")
    listing.add_argument("-n", type=int, default=50, help="how many with --all (default 50)")
    show = actions.add_parser("show", help="everything about one approval: invocation, decisions, result")
    show.add_argument("approval_id")
    for name, text in (("approve", "approve; the gateway runs the invocation once"), ("reject", "reject")):
        action = actions.add_parser(name, help=text)
        action.add_argument("approval_id")
        action.add_argument(
            "--reason",
            required=name == "reject",
            default="",
            help="why (shown to the agent; required to reject)",
        )
        action.add_argument("--operator", help="who decides (default: $SUDO_USER, else $USER)")


def operator_name(explicit: str | None) -> str:
    if explicit:
        return explicit
    for variable in ("SUDO_USER", "USER", "LOGNAME"):
        value = os.environ.get(variable)
        if value:
            return value
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid:{os.getuid()}"


# --- policy -------------------------------------------------------------------------------------


def run_policy(config: GatewayConfig, args: argparse.Namespace) -> None:
    path = Path(config.policy.file)
    if args.policy_command == "show":
        if path.exists():
            print(f"# {path}", file=sys.stderr)
            print(path.read_text(encoding="utf-8"), end="")
        else:
            print(f"# {path} does not exist: the shipped default policy is in force", file=sys.stderr)
            print(shipped_default_text(), end="")
        return
    try:
        policy = initial_policy(path)
    except PolicyError as exc:
        raise CtlError(
            f"policy refused: {exc}", "fix the file; the gateway keeps the policy it has"
        ) from None
    if args.policy_command == "reload":
        if not signal_gateway(config.state_dir, signal.SIGHUP):
            raise CtlError(
                f"{path} is valid ({len(policy.rules)} rules), but no running gateway was found to reload it",
                f"start the gateway (it reads the policy at start-up); pidfile: {config.state_dir / PIDFILE}",
            )
        print(f"{path} is valid ({len(policy.rules)} rules); the gateway is reloading it", file=sys.stderr)
        return
    try:
        definition = default_registry().get(args.capability).definition
    except GatewayError as exc:
        raise CtlError(
            exc.message, "kruxosctl policy test takes a capability name such as process.run"
        ) from None
    inputs: dict[str, object] = {}
    for item in args.inputs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CtlError(f"bad input {item!r}", 'write inputs as NAME=VALUE, e.g. command="kubectl apply"')
        try:
            inputs[name] = json.loads(value)
        except ValueError:
            inputs[name] = value
    decision = policy.decide(args.key, definition, inputs)
    where = f" (line {decision.line})" if decision.line is not None else ""
    print(f"decision: {decision.decision}")
    print(f"rule:     {decision.rule}{where}")
    print(f"why:      {decision.why}")
    print(f"policy:   {policy.source}")


# --- approvals ----------------------------------------------------------------------------------


def run_approvals(conn: sqlite3.Connection, config: GatewayConfig, args: argparse.Namespace) -> None:
    command = args.approvals_command
    if command == "list":
        with transaction(conn):
            approvals_store.expire_due(conn)
        rows = approvals_store.list_approvals(conn, open_only=not args.all, limit=args.n)
        if not rows:
            print("no approvals are waiting" if not args.all else "no approvals yet", file=sys.stderr)
            return
        table = [("ID", "STATUS", "KEY", "CAPABILITY", "RULE", "CREATED", "EXPIRES", "INPUTS")]
        for a in rows:
            table.append(
                (
                    a.approval_id,
                    a.status,
                    a.key_name,
                    a.capability,
                    a.rule,
                    approvals_store.iso(a.created_at) or "",
                    approvals_store.iso(a.expires_at) or "",
                    _brief(approvals_store.canonical(a.inputs)),
                )
            )
        print_table(table)
        return
    if command == "show":
        _show(conn, args.approval_id)
        return
    operator = operator_name(args.operator)
    try:
        with transaction(conn):
            decided = approvals_store.decide(
                conn, args.approval_id, approve=command == "approve", operator=operator, reason=args.reason
            )
    except KeyError:
        raise CtlError(
            f"no approval {args.approval_id!r}", "kruxosctl approvals list shows the waiting ones"
        ) from None
    except approvals_store.NotPending as exc:
        raise CtlError(
            f"approval {args.approval_id} is already {exc.status}", "only a pending approval can be decided"
        ) from None
    told = signal_gateway(config.state_dir, signal.SIGUSR1)
    note = (
        ""
        if told
        else " (no running gateway was signalled: it applies the decision when it next sweeps or starts)"
    )
    print(f"{decided.status} {decided.approval_id} as {operator}{note}", file=sys.stderr)


def _show(conn: sqlite3.Connection, approval_id: str) -> None:
    a = approvals_store.get(conn, approval_id)
    if a is None:
        raise CtlError(f"no approval {approval_id!r}", "kruxosctl approvals list --all shows recent ones")
    print(f"approval:   {a.approval_id}")
    print(f"status:     {a.status}")
    print(f"key:        {a.key_name} (session {a.session_id})")
    print(f"capability: {a.capability}")
    print(f"inputs:     {json.dumps(a.inputs, sort_keys=True, ensure_ascii=False)}")
    print(f"rule:       {a.rule}")
    print(f"created:    {approvals_store.iso(a.created_at)}")
    print(f"expires:    {approvals_store.iso(a.expires_at)}")
    for ts, decision, who, reason in approvals_store.decisions(conn, approval_id):
        print(f"decision:   {ts}  {decision} by {who}" + (f": {reason}" if reason else ""))
    if a.result is not None:
        print(f"result:     {json.dumps(a.result, sort_keys=True, ensure_ascii=False)}")


def _brief(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
