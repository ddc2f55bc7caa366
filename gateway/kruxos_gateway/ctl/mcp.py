"""``kruxosctl mcp config NAME``: a key for an MCP client, and the client's configuration entry.

The operator names the agent (``claude-laptop``); kruxosctl creates its key (or rotates it with
``--rotate``) and prints the entry the chosen client reads (``--client``: claude-code, cursor, vscode,
claude-desktop; none: the generic one), built by the SDK exactly as ``agent.as_mcp_config()`` does.
The entry holds the key, so it is printed once, or written to ``--output`` with mode 0600.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Any, TextIO

from ..config import GatewayConfig
from ..storage import store
from .output import CtlError

CLIENTS = ("claude-code", "claude-desktop", "cursor", "vscode")


def add_parsers(commands: Any) -> None:
    mcp = commands.add_parser("mcp", help="MCP clients: a key and the client's configuration")
    mcp_commands = mcp.add_subparsers(dest="mcp_command", required=True, metavar="ACTION")
    config = mcp_commands.add_parser(
        "config", help="create (or --rotate) the key NAME and print an MCP client's entry for it"
    )
    config.add_argument("name", help="a name for the agent that uses the client, e.g. claude-laptop")
    config.add_argument(
        "--client", choices=CLIENTS, help="the client's own format (default: the generic entry)"
    )
    config.add_argument(
        "--host",
        help="how the client reaches this gateway, HOST:PORT or ws(s)://... "
        "(default: localhost and the listen port)",
    )
    config.add_argument(
        "--rotate", action="store_true", help="replace the live key NAME instead of creating it"
    )
    config.add_argument(
        "--output", type=Path, help="write the entry to this file (mode 0600) instead of stdout"
    )


def new_entry(conn: sqlite3.Connection, config: GatewayConfig, args: argparse.Namespace) -> str:
    """Make (or rotate) the key and return the client's entry as JSON; the caller commits, then shows."""
    try:
        from kruxos.errors import ConfigurationError
        from kruxos.mcp import client_config
    except ImportError:
        raise CtlError(
            "the KruxOS SDK (python package kruxos) is not installed here",
            "install it (the appliance has it in /opt/kruxos/sdk/python), or use agent.as_mcp_config()",
        ) from None
    host = args.host or f"localhost:{config.listen.port}"
    if args.rotate:
        key = store.rotate_key(conn, args.name)
        if key is None:
            raise CtlError(f"no live key named {args.name!r}", "drop --rotate to create it")
    else:
        try:
            key = store.create_key(conn, args.name)
        except (store.KeyExists, store.KeyNameRetired):
            raise CtlError(
                f"a key named {args.name!r} exists or existed",
                "pass --rotate to replace it (its old key stops working), or choose another name",
            ) from None
    try:
        return str(client_config(host, key, args.client)) + "\n"
    except ConfigurationError as exc:  # raised inside the caller's transaction: the key is not kept
        raise CtlError(str(exc), "pass --host HOST:PORT, e.g. --host kruxos.local:7700") from None


def show(text: str, name: str, output: TextIO | None) -> None:
    if output is not None:
        with output:
            output.write(text)
        print(f"key {name!r}: MCP entry written to {output.name}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        print(f"key {name!r}: the entry holds its key, shown only once", file=sys.stderr)
