"""MCP at ``/mcp``: every capability as an MCP tool, under the same policy, approvals and audit.

``tools.py`` maps capabilities to tools (names, schemas, annotations); ``server.py`` answers MCP's
JSON-RPC methods through the invocation pipeline; ``http.py`` serves them over Streamable HTTP and
a WebSocket at the same path (docs/mcp.md).
"""
