"""``kruxosctl policy …`` and ``kruxosctl approvals …``: the operator's side of policy and approvals.

Decisions are written to the gateway's database in one transaction (with their audit records), then
the running gateway is told with a signal to the PID in ``state_dir/gateway.pid``: SIGUSR1 ("a
decision was made": it runs the approved invocation or pushes the rejection at once), SIGHUP
("reload the policy"). If the signal cannot be sent the decision still stands: the gateway's periodic
sweep (``policy.approval_poll_interval``) or its next start picks it up.

Agents wrote most of what an approval holds: every field is printed through ``logs.escape``, the list
says how many approvals it left out and marks every input it cut, and ``approvals show`` prints the
inputs in full.
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

from .. import compose
from ..approvals import store as approvals_store
from ..capabilities.workspace import Workspace
from ..config import GatewayConfig
from ..errors import GatewayError
from ..logs import escape
from ..pidfile import PIDFILE, signal_gateway
from ..policy.rules import Policy, PolicyError, configured_policy, load_policy, shipped_default_text
from ..storage.store import transaction
from .output import CtlError, print_table

BRIEF_INPUTS = 60


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
    listing.add_argument("--all", action="store_true", help="also decided ones (the most recent)")
    listing.add_argument(
        "-n", "--limit", dest="n", type=int, default=50, help="how many to list at most (default 50)"
    )
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
        _show_policy(config, path)
        return
    policy = _policy(config, reload=args.policy_command == "reload")
    if args.policy_command == "reload":
        if not signal_gateway(config.state_dir, signal.SIGHUP):
            raise CtlError(
                f"{path} is valid ({len(policy.rules)} rules), but no running gateway was found to reload it",
                f"start the gateway (it reads the policy at start-up); pidfile: {config.state_dir / PIDFILE}",
            )
        print(f"{path} is valid ({len(policy.rules)} rules); the gateway is reloading it", file=sys.stderr)
        return
    try:
        definition = compose.registry(config).get(args.capability).definition
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
    print(escape(f"rule:     {decision.rule}{where}"))
    print(escape(f"why:      {decision.why}"))
    print(escape(f"policy:   {policy.source}"))


def _show_policy(config: GatewayConfig, path: Path) -> None:
    """Print the policy file, or the shipped default when no file is configured or at the default path."""
    if path.exists():
        print(f"# {path}", file=sys.stderr)
        # Escaped but for line ends and tabs: a bidi override must not hide a rule (Trojan Source).
        print(escape(path.read_text(encoding="utf-8"), keep="\n\t"), end="")
    elif "file" not in config.policy.model_fields_set:
        print(f"# {path} does not exist: the shipped default policy is in force", file=sys.stderr)
        print(shipped_default_text(), end="")
    else:
        raise CtlError(
            f"{path} does not exist (policy.file)",
            "restore it: the gateway does not start without it, and a running one keeps its policy",
        )


def _policy(config: GatewayConfig, *, reload: bool) -> Policy:
    """The policy file as the gateway would load it: at start-up, or on a reload (``reload``).

    A reload never falls back to the shipped default; paths are resolved in the workspace, as the
    gateway resolves them (if kruxosctl cannot read the workspace, they are only normalised).
    """
    workspace = Workspace(config.workspace.root)
    try:
        if reload:
            return load_policy(Path(config.policy.file), workspace=workspace)
        return configured_policy(config.policy, workspace=workspace)
    except PolicyError as exc:
        raise CtlError(
            f"policy refused: {exc}", exc.hint or "fix the file; the gateway keeps the policy it has"
        ) from None


# --- approvals ----------------------------------------------------------------------------------


def run_approvals(conn: sqlite3.Connection, config: GatewayConfig, args: argparse.Namespace) -> None:
    command = args.approvals_command
    if command == "list":
        with transaction(conn):
            approvals_store.expire_due(conn)
        _list(conn, open_only=not args.all, limit=args.n)
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


def _list(conn: sqlite3.Connection, *, open_only: bool, limit: int) -> None:
    """The table of approvals, then on stderr what it left out: approvals past ``limit``, cut inputs."""
    rows = approvals_store.list_approvals(conn, open_only=open_only, limit=limit)
    if not rows:
        print("no approvals are waiting" if open_only else "no approvals yet", file=sys.stderr)
        return
    table = [("ID", "STATUS", "KEY", "CAPABILITY", "RULE", "CREATED", "EXPIRES", "INPUTS")]
    cut = False
    for a in rows:
        inputs, was_cut = _brief(approvals_store.canonical(a.inputs))
        cut = cut or was_cut
        table.append(
            (
                a.approval_id,
                a.status,
                a.key_name,
                a.capability,
                a.rule,
                approvals_store.iso(a.created_at) or "",
                approvals_store.iso(a.expires_at) or "",
                inputs,
            )
        )
    print_table(table)
    left_out = _count(conn, open_only=open_only) - len(rows)
    if left_out > 0:
        which = "newer" if open_only else "older"
        print(f"{left_out} more not shown ({which}); --limit N lists more", file=sys.stderr)
    if cut:
        print(
            f"inputs longer than {BRIEF_INPUTS} characters are cut (…(+N chars)): "
            "kruxosctl approvals show ID prints them in full",
            file=sys.stderr,
        )


def _count(conn: sqlite3.Connection, *, open_only: bool) -> int:
    """How many approvals the list would show without a limit."""
    if open_only:
        marks = ", ".join("?" * len(approvals_store.OPEN))
        query = f"SELECT COUNT(*) FROM approvals WHERE status IN ({marks})"
        return int(conn.execute(query, approvals_store.OPEN).fetchone()[0])
    return int(conn.execute("SELECT COUNT(*) FROM approvals").fetchone()[0])


def _brief(text: str, limit: int = BRIEF_INPUTS) -> tuple[str, bool]:
    """``text`` escaped, cut after ``limit`` characters with a mark of how many more; and if it was cut.

    The mark is explicit so that a long harmless head (``sleep 2 …``) cannot pass for the whole
    command while the dangerous tail (``; rm -rf …``) stays out of sight.
    """
    if len(text) <= limit:
        return escape(text), False
    return f"{escape(text[:limit])}…(+{len(text) - limit} chars)", True


def _show(conn: sqlite3.Connection, approval_id: str) -> None:
    """Every field of one approval, the inputs and result in full (JSON), all escaped."""
    a = approvals_store.get(conn, approval_id)
    if a is None:
        raise CtlError(f"no approval {approval_id!r}", "kruxosctl approvals list --all shows recent ones")
    lines = [
        f"approval:   {a.approval_id}",
        f"status:     {a.status}",
        f"key:        {a.key_name} (session {a.session_id})",
        f"capability: {a.capability}",
        f"inputs:     {json.dumps(a.inputs, sort_keys=True, ensure_ascii=False)}",
        f"rule:       {a.rule}",
        f"created:    {approvals_store.iso(a.created_at)}",
        f"expires:    {approvals_store.iso(a.expires_at)}",
    ]
    for ts, decision, who, reason in approvals_store.decisions(conn, approval_id):
        lines.append(f"decision:   {ts}  {decision} by {who}" + (f": {reason}" if reason else ""))
    if a.result is not None:
        lines.append(f"result:     {json.dumps(a.result, sort_keys=True, ensure_ascii=False)}")
    for line in lines:
        print(escape(line))
