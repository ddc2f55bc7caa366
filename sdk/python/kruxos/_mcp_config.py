"""MCP client configuration for a gateway: what ``agent.as_mcp_config()`` returns.

The gateway serves MCP at ``/mcp`` on its one port: Streamable HTTP (``http://``) and, for clients
that accept ``"type": "ws"``, a WebSocket at the same path (``ws://``). Each client reads its own
file format; this module writes the entry each one needs, with the agent's key as a Bearer header.
Claude Desktop takes no ``url`` entries from its configuration file, so for it the entry starts the
SDK's stdio bridge (``python3 -m kruxos.mcp``), which reads ``KRUXOS_HOST`` and ``KRUXOS_API_KEY``.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from kruxos._config import API_KEY_ENV, DEFAULT_PATH, HOST_ENV
from kruxos.errors import ConfigurationError

__all__ = ["MCP_PATH", "SERVER_NAME", "McpClient", "McpConfig", "mcp_config"]

MCP_PATH = "/mcp"
SERVER_NAME = "kruxos"
McpClient = Literal["claude-code", "claude-desktop", "cursor", "vscode"]


class McpConfig(dict[str, Any]):
    """A client's MCP configuration: a ``dict`` to merge into its file or pass on, printed as the
    JSON that file holds (two-space indent, double quotes)."""

    def __str__(self) -> str:
        return json.dumps(self, indent=2)


def mcp_config(supervision_url: str, api_key: str, client: McpClient | None = None) -> McpConfig:
    """The configuration of ``client`` (None: the generic entry, a WebSocket URL with headers)."""
    if client is not None and client not in get_args(McpClient):
        known = ", ".join(repr(c) for c in get_args(McpClient))
        raise ConfigurationError(f"unknown MCP client {client!r}: use one of {known}, or none")
    headers = {"Authorization": f"Bearer {api_key}"}
    if client is None:
        return McpConfig(mcpServers={SERVER_NAME: {"url": mcp_url(supervision_url), "headers": headers}})
    if client == "claude-desktop":
        return McpConfig(
            mcpServers={
                SERVER_NAME: {
                    "command": "python3",
                    "args": ["-m", "kruxos.mcp"],
                    "env": {HOST_ENV: _address(supervision_url), API_KEY_ENV: api_key},
                }
            }
        )
    http = mcp_url(supervision_url, http=True)
    if client == "claude-code":
        return McpConfig(mcpServers={SERVER_NAME: {"type": "http", "url": http, "headers": headers}})
    if client == "cursor":
        return McpConfig(mcpServers={SERVER_NAME: {"url": http, "headers": headers}})
    return McpConfig(servers={SERVER_NAME: {"type": "http", "url": http, "headers": headers}})  # vscode


def mcp_url(supervision_url: str, *, http: bool = False) -> str:
    """The gateway's MCP endpoint beside its supervision endpoint (``ws://…`` or ``http://…``).

    A supervision URL behind a path prefix (``wss://host/kruxos/v1/supervision``) keeps the prefix.
    """
    parts = urlsplit(supervision_url)
    prefix = parts.path.removesuffix(DEFAULT_PATH) if parts.path.endswith(DEFAULT_PATH) else ""
    scheme = parts.scheme
    if http:
        scheme = "https" if scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, prefix.rstrip("/") + MCP_PATH, "", ""))


def _address(supervision_url: str) -> str:
    """What ``KRUXOS_HOST`` needs to reach the same gateway: ``HOST:PORT``, or the URL itself when
    it is not the plain default (TLS, a path prefix)."""
    parts = urlsplit(supervision_url)
    if parts.scheme == "ws" and parts.path == DEFAULT_PATH:
        return parts.netloc
    return supervision_url
