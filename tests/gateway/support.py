"""Test support: a real gateway on loopback port 0, a small client, and deadline polling.

Waits are bounded by the suite's one scaled ``timeout`` (``tests/helpers.py``), re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kruxos_gateway import compose, serving
from kruxos_gateway.capabilities._cgroups import CommandCgroups
from kruxos_gateway.capabilities.base import RunAs
from kruxos_gateway.compose import Parts
from kruxos_gateway.config import GatewayConfig
from kruxos_gateway.policy.rules import Policy, parse_policy
from kruxos_gateway.storage import store
from kruxos_gateway.storage.db import Database
from kruxos_gateway.transports.server import GatewayServer
from websockets.asyncio.client import ClientConnection, connect

from ..helpers import TIMEOUT_FACTOR, eventually, timeout, wait_until

__all__ = [
    "TIMEOUT_FACTOR",
    "Client",
    "RunningGateway",
    "eventually",
    "http_get",
    "http_request",
    "make_config",
    "running_gateway",
    "timeout",
    "wait_until",
]


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> GatewayConfig:
    """A configuration listening on 127.0.0.1:0 with its workspace and state under ``tmp_path``."""
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    raw: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "state_dir": tmp_path / "state",
        "workspace": {"root": workspace},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    (tmp_path / "state").mkdir(exist_ok=True)
    return GatewayConfig.model_validate(raw)


class Client:
    """A supervision connection that sends requests and reads frames as dicts."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.hello = hello
        self._ids = 0

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def recv(self, seconds: float = 5.0) -> dict[str, Any]:
        message = await asyncio.wait_for(self.ws.recv(), timeout(seconds))
        assert isinstance(message, str), "the gateway sends text frames only"
        frame: dict[str, Any] = json.loads(message)
        return frame

    def next_id(self) -> str:
        self._ids += 1
        return str(self._ids)

    async def send_request(self, method: str, params: dict[str, Any] | None = None) -> str:
        request_id = self.next_id()
        frame: dict[str, Any] = {"type": "request", "id": request_id, "method": method}
        if params is not None:
            frame["params"] = params
        await self.send(frame)
        return request_id

    async def request(
        self, method: str, params: dict[str, Any] | None = None, seconds: float = 5.0
    ) -> dict[str, Any]:
        request_id = await self.send_request(method, params)
        frame = await self.recv(seconds)
        assert frame.get("id") == request_id, frame
        return frame

    async def invoke(self, name: str, seconds: float = 5.0, **inputs: Any) -> dict[str, Any]:
        """The answer frame to ``capabilities.invoke``."""
        return await self.request("capabilities.invoke", {"name": name, "inputs": inputs}, seconds)

    async def result(self, name: str, **inputs: Any) -> dict[str, Any]:
        """The ``InvocationResult`` of an invocation that ran (fails on an error frame)."""
        frame = await self.invoke(name, **inputs)
        assert frame["type"] == "response", frame
        result: dict[str, Any] = frame["result"]
        return result

    async def data(self, name: str, **inputs: Any) -> dict[str, Any]:
        """The data of an invocation that succeeded."""
        result = await self.result(name, **inputs)
        assert result["success"], result
        data: dict[str, Any] = result["data"]
        return data

    async def closed(self, seconds: float = 5.0) -> tuple[int | None, str | None]:
        """Wait for the gateway to close the connection; return the code and reason it sent."""
        with contextlib.suppress(Exception):
            while True:
                await asyncio.wait_for(self.ws.recv(), timeout(seconds))
        rcvd = self.ws.protocol.close_rcvd
        return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)


# Tests of the gateway's mechanics run without a policy in the way; policy tests pass their own.
ALLOW_ALL = parse_policy("version: 1\ndefault: allow\n", "allow-all (tests)")


@dataclass
class RunningGateway:
    server: GatewayServer
    db: Database
    config: GatewayConfig
    key: str
    parts: Parts

    @property
    def port(self) -> int:
        return self.server.address[1]

    @property
    def workspace(self) -> Path:
        return self.config.workspace.root

    def url(self, path: str = "/v1/supervision") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def create_key(self, name: str, *, take_over: bool = False) -> str:
        return await self.db.run(functools.partial(store.create_key, name=name, take_over=take_over))

    async def revoke_key(self, name: str) -> bool:
        return await self.db.run(functools.partial(store.revoke_key, name=name))

    def connect_raw(self, key: str | None = None, path: str = "/v1/supervision", **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {key if key is not None else self.key}"}
        kwargs.setdefault("subprotocols", ["kruxos.v1"])
        kwargs.setdefault("open_timeout", timeout(5))
        return connect(self.url(path), additional_headers=headers, **kwargs)

    @contextlib.asynccontextmanager
    async def client(self, key: str | None = None, **kwargs: Any) -> AsyncIterator[Client]:
        async with self.connect_raw(key, **kwargs) as ws:
            hello = json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
            assert hello["type"] == "hello", hello
            yield Client(ws, hello)


@contextlib.asynccontextmanager
async def running_gateway(
    config: GatewayConfig,
    run_as: RunAs | None = None,
    cgroups: CommandCgroups | None = None,
    policy: Policy | None = None,
) -> AsyncIterator[RunningGateway]:
    """A real gateway on 127.0.0.1, port chosen by the kernel, with one key named alice, under
    ``policy`` (by default one that allows everything)."""
    db = Database(config.db_path)
    db.start()
    try:
        # A test that restarts the gateway on the same state revokes alice first: the new key takes
        # over what alice had, as `kruxosctl keys rotate` would.
        key = await db.run(functools.partial(store.create_key, name="alice", take_over=True))
        parts = compose.build(config, db, policy or ALLOW_ALL, run_as=run_as, cgroups=cgroups)
        transports = serving.serve(parts)
        server = transports.server
        await server.start()
        try:
            yield RunningGateway(server, db, config, key, parts)
        finally:
            await transports.shutdown()
    finally:
        await db.close()


async def http_get(
    port: int, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET (no upgrade); returns status, headers (names in lower case) and body."""
    return await http_request(port, "GET", path, headers=headers)


async def http_request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP/1.1 request on its own connection; returns status, headers (names in lower
    case) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout(5))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), parsed, rest
