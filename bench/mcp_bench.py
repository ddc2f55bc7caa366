#!/usr/bin/env python3
"""MCP tools/call round trips: KruxOS's /mcp against FastMCP, and against the supervision WebSocket.

    .venv/bin/python bench/mcp_bench.py [--quick]

Each server runs in its own process; the clients run in this one, one call in flight:

1. ``kruxos /mcp``    ``tools/call filesystem_stat`` of the workspace on the gateway's Streamable HTTP
                      endpoint, through the official MCP Python SDK's client (one session);
2. ``fastmcp``        the same client calling a FastMCP server (Streamable HTTP, the FastMCP release of
                      requirements/mcp-clients.txt) whose tool ``filesystem_stat`` does the same
                      ``os.lstat`` of a directory and returns the same fields;
3. ``kruxos sdk``     ``filesystem.stat`` through the KruxOS SDK on ``/v1/supervision``.

Target (issue #12): kruxos /mcp >= 1.5x fastmcp. The rows are measured interleaved in ``ROUNDS``
rounds, so a change of the machine's load weighs on every row alike. It prints PASS or MISS and
exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2

# Beside this file, so on sys.path when it runs: the gateway daemon as the gateway bench starts it.
from gateway_bench import gateway
from kruxos import KruxOS
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

ROUNDS = 5
TARGET = 1.5

FASTMCP_SERVER = """
import os, sys
from datetime import UTC, datetime
from fastmcp import FastMCP

root = sys.argv[1]
server = FastMCP("bench")

@server.tool
def filesystem_stat(path: str) -> dict:
    st = os.lstat(os.path.join(root, path.removeprefix("/workspace").lstrip("/")))
    return {"path": path, "name": os.path.basename(path), "type": "directory", "size": st.st_size,
            "modified": datetime.fromtimestamp(st.st_mtime, UTC).isoformat(), "mode": oct(st.st_mode & 0o777),
            "symlink_target": None}

server.run(transport="http", host="127.0.0.1", port=int(sys.argv[2]), show_banner=False, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def fastmcp_server(root: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", FASTMCP_SERVER, str(root), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: FastMCP did not start (exit {process.returncode})")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.asynccontextmanager
async def mcp_session(url: str, headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def timed(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def main(quick: bool) -> int:
    per_round = 200 if quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with gateway(root / "kruxos") as gw, fastmcp_server(root / "kruxos" / "workspace") as fast_url:
            headers = {"Authorization": f"Bearer {gw.key}"}
            async with (
                mcp_session(f"http://{gw.host}/mcp", headers) as kruxos_mcp,
                mcp_session(fast_url, {}) as fast,
                KruxOS.connect_async(gw.host, api_key=gw.key) as agent,
            ):
                args = {"path": "/workspace"}

                async def kruxos_call() -> None:
                    result = await kruxos_mcp.call_tool("filesystem_stat", args)
                    assert not result.is_error, result

                async def fast_call() -> None:
                    result = await fast.call_tool("filesystem_stat", args)
                    assert not result.is_error, result

                async def sdk_call() -> None:
                    await agent.capabilities.invoke("filesystem.stat", path="/workspace")

                rows: dict[str, Callable[[], Awaitable[None]]] = {
                    "kruxos /mcp": kruxos_call,
                    "fastmcp": fast_call,
                    "kruxos sdk": sdk_call,
                }
                for call in rows.values():
                    await timed(call, 50)  # warm-up
                samples: dict[str, list[float]] = {name: [] for name in rows}
                per_round_rates: dict[str, list[float]] = {name: [] for name in rows}
                for _ in range(ROUNDS):
                    for name, call in rows.items():
                        got = await timed(call, per_round)
                        samples[name] += got
                        per_round_rates[name].append(len(got) / sum(got))
    rate = {name: len(s) / sum(s) for name, s in samples.items()}
    python = sys.version.split()[0]
    print(f"MCP tools/call, one in flight, loopback, {ROUNDS} interleaved rounds; Python {python}")
    print(f"{'row':<14} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, s in samples.items():
        ordered = sorted(s)
        p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
        print(f"{name:<14} {rate[name]:>9.0f} {statistics.median(s) * 1000:>8.2f} {p99:>8.2f}")
    ratio = rate["kruxos /mcp"] / rate["fastmcp"]
    pairs = zip(per_round_rates["kruxos /mcp"], per_round_rates["fastmcp"], strict=True)
    print("per round: kruxos /mcp / fastmcp", " ".join(f"{k / f:.2f}" for k, f in pairs))
    verdict = "PASS" if ratio >= TARGET else "MISS"
    print(f"kruxos /mcp / fastmcp: {ratio:.2f} (target >= {TARGET}) {verdict}")
    over_sdk = rate["kruxos /mcp"] / rate["kruxos sdk"]
    print(f"kruxos /mcp / kruxos sdk: {over_sdk:.2f} (the SDK on the supervision WebSocket, same capability)")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the work, for a smoke run")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
