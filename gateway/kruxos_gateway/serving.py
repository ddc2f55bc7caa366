"""The transports over a gateway's parts (``compose.build``): the HTTP server on the port, with
``/health``, ``/v1/supervision`` and ``/mcp`` on it. Apart from ``compose.py`` so that what only
needs the parts (``kruxosctl policy test``) does not load the HTTP server."""

from __future__ import annotations

from dataclasses import dataclass

from .compose import Parts
from .mcp.http import McpEndpoint
from .mcp.server import McpServer
from .transports.server import GatewayServer


@dataclass(frozen=True)
class Serving:
    """The transports of one gateway: the HTTP server on the port, with every route on it."""

    server: GatewayServer
    mcp: McpEndpoint

    async def shutdown(self) -> None:
        """Drain the server, then end what MCP sessions remain (their session state goes)."""
        await self.server.shutdown()
        await self.mcp.close()


def serve(parts: Parts) -> Serving:
    """The transports of ``parts``, not yet listening: ``/health``, ``/v1/supervision`` and ``/mcp``.

    The MCP endpoint checks keys with the supervision endpoint's check, so failed attempts on
    either count toward one limit per address."""
    server = GatewayServer(parts.config, parts.db, parts.gateway)
    tools = McpServer(parts.registry, parts.policy, parts.pipeline, parts.approvals)
    mcp = McpEndpoint(
        tools,
        parts.sessions,
        server.supervision.authenticate,
        server.supervision.take_key_slot,
        parts.db,
        parts.config.limits.max_in_flight,
    )
    server.add_routes(mcp.routes())
    return Serving(server, mcp)
