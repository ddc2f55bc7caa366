"""``python3 -m kruxos.mcp``: a stdio MCP server that relays to a KruxOS gateway's ``/mcp``.

For MCP clients that start their servers as commands (Claude Desktop among them): the client writes
JSON-RPC messages to our stdin, one per line, and reads the gateway's from our stdout, one per line
(MCP's stdio transport). Each line goes to the gateway as one text frame of the WebSocket at
``/mcp`` (subprotocol ``mcp``), authenticated with the key as a Bearer header, and each frame comes
back as one line. Nothing beyond the SDK's own dependencies is needed, so the SDK copied off the
appliance onto a laptop is enough.

The gateway and key come from ``KRUXOS_HOST`` and ``KRUXOS_API_KEY`` (or ``--host``), as for
:meth:`kruxos.KruxOS.connect`. Diagnostics go to stderr; stdout carries MCP messages only. Exit
status: 0 when the client closes stdin, 1 when the gateway cannot be reached or closes the
connection, 2 for a bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from kruxos._config import resolve_api_key, resolve_url, validate_api_key
from kruxos._mcp_config import McpClient, McpConfig, mcp_config, mcp_url
from kruxos._version import __version__
from kruxos.errors import ConfigurationError

__all__ = ["DRAIN_SECONDS", "MAX_MESSAGE_BYTES", "SUBPROTOCOL", "client_config", "main", "relay"]

PROG = "kruxos.mcp"
SUBPROTOCOL = "mcp"
# One MCP message per line or frame; a tool result can carry a whole file, which the gateway bounds.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# After the client closed stdin, how long answers to what it sent may still take.
DRAIN_SECONDS = 30.0


def client_config(host: str, api_key: str, client: McpClient | None = None) -> McpConfig:
    """The MCP configuration of ``client`` for the gateway at ``host`` with ``api_key``, without
    connecting (what ``agent.as_mcp_config()`` returns, for tools such as ``kruxosctl mcp config``)."""
    return mcp_config(resolve_url(host), validate_api_key(api_key), client)


async def relay(
    url: str, api_key: str, stdin: asyncio.StreamReader, stdout: asyncio.StreamWriter | None = None
) -> int:
    """Relay lines of ``stdin`` to the WebSocket at ``url`` and its frames to ``stdout`` (or
    ``sys.stdout``) until either side ends; returns the exit status."""
    try:
        websocket = await connect(
            url,
            subprotocols=[Subprotocol(SUBPROTOCOL)],
            additional_headers={"Authorization": f"Bearer {api_key}"},
            user_agent_header=f"kruxos-mcp-bridge/{__version__}",
            max_size=MAX_MESSAGE_BYTES,
            compression=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        why = "the API key was refused" if status in (401, 403) else f"HTTP {status}"
        _say(f"cannot open {url}: {why}")
        return 1
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        _say(f"cannot reach {url}: {exc}")
        return 1
    async with websocket:
        pending = _Pending()
        upstream = asyncio.create_task(_lines_to_frames(stdin, websocket, pending))
        downstream = asyncio.create_task(_frames_to_lines(websocket, stdout, pending))
        done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        if upstream in done and upstream.exception() is None:
            # The client closed stdin: it sends nothing more. Answers to what it sent are still
            # written (a bounded wait: a request the gateway never answers must not hold us).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.answered.wait(), DRAIN_SECONDS)
            await websocket.close()
            status = 0
        else:
            status = 1
        for task in (upstream, downstream):
            task.cancel()
        await asyncio.gather(upstream, downstream, return_exceptions=True)
    if status:
        close = websocket.protocol.close_rcvd
        reason = f" ({close.code} {close.reason})".rstrip() if close is not None else ""
        _say(f"the gateway closed the connection{reason}")
    return status


class _Pending:
    """The ids of requests sent and not yet answered; ``answered`` is set while there are none."""

    def __init__(self) -> None:
        self.ids: set[object] = set()
        self.answered = asyncio.Event()
        self.answered.set()

    def sent(self, text: str) -> None:
        for message in _messages(text):
            if "method" in message and _hashable_id(message):
                self.ids.add(message["id"])
        if self.ids:
            self.answered.clear()

    def received(self, text: str) -> None:
        for message in _messages(text):
            if "method" not in message and _hashable_id(message):
                self.ids.discard(message["id"])
        if not self.ids:
            self.answered.set()


def _messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of one line (a batch is a list); none if it is not JSON."""
    try:
        decoded = json.loads(text)
    except ValueError:
        return []
    batch = decoded if isinstance(decoded, list) else [decoded]
    return [m for m in batch if isinstance(m, dict)]


def _hashable_id(message: dict[str, Any]) -> bool:
    return isinstance(message.get("id"), str | int) and not isinstance(message.get("id"), bool)


async def _lines_to_frames(
    stdin: asyncio.StreamReader, websocket: ClientConnection, pending: _Pending
) -> None:
    while True:
        try:
            line = await stdin.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            line = exc.partial  # the last message may end without a newline
            if not line.strip():
                return
        text = line.decode("utf-8", errors="replace").strip()
        if text:  # MCP's stdio transport: one message per line, no embedded newlines
            pending.sent(text)
            await websocket.send(text)
        if not line.endswith(b"\n"):
            return


async def _frames_to_lines(
    websocket: ClientConnection, stdout: asyncio.StreamWriter | None, pending: _Pending
) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in websocket:
            text = message if isinstance(message, str) else message.decode("utf-8", errors="replace")
            pending.received(text)
            # JSON never needs a raw newline; a message holding one would be read as two.
            data = text.replace("\r", "").replace("\n", "").encode("utf-8") + b"\n"
            if stdout is None:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            else:
                stdout.write(data)
                await stdout.drain()


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _main(url: str, api_key: str) -> int:
    return await relay(url, api_key, await _stdin_reader())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python3 -m {PROG}",
        description="A stdio MCP server relaying to a KruxOS gateway (KRUXOS_HOST, KRUXOS_API_KEY).",
    )
    parser.add_argument("--host", help="the gateway, HOST:PORT or ws(s)://… (default: $KRUXOS_HOST)")
    args = parser.parse_args(argv)
    try:
        url = mcp_url(resolve_url(args.host))
        api_key = resolve_api_key(None)
    except ConfigurationError as exc:
        _say(f"error: {exc}")
        return 2
    try:
        return asyncio.run(_main(url, api_key))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
