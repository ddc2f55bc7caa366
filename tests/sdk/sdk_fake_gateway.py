"""A scripted kruxos.v1 gateway on port 0, for driving the SDK's I/O layer over a real socket.

It speaks the wire format of docs/protocol.md and nothing more; the real gateway is exercised by
tests/guide/.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..helpers import timeout

KEY = "ab" * 32


CAPABILITIES: list[dict[str, Any]] = [
    {
        "name": "filesystem.read",
        "category": "filesystem",
        "tags": ["safe", "read-only"],
        "purpose": "Read a file inside the workspace.",
        "when_to_use": "When you need the contents of a file.",
        "inputs": [{"name": "path", "type": "string", "required": True, "default": None, "description": "p"}],
        "outputs": [{"name": "content", "type": "string", "description": "c"}],
        "permission_tier": "read",
        "added_in_a_later_version": True,
    },
    {
        "name": "process.run",
        "category": "process",
        "tags": [],
        "purpose": "Run a command.",
        "when_to_use": "When you must.",
        "inputs": [{"name": "command", "type": "string_or_array", "required": True}],
        "outputs": [],
        "permission_tier": "execute",
    },
]

Answer = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


def error_object(type_: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "message": message,
        "recovery": [],
        "rule": None,
        "approval_id": None,
        "details": {},
    } | extra


def result(name: str, *, data: Any = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "invocation_id": "inv_1",
        "capability": name,
        "success": error is None,
        "data": data,
        "error": error,
        "duration_ms": 0.5,
    }


class FakeGateway:
    """Answers requests with :meth:`answer` (override per test); every answer runs in its own task."""

    def __init__(self) -> None:
        self.refusal: tuple[int, dict[str, str], dict[str, Any]] | None = None
        self.hello: dict[str, Any] = {
            "type": "hello",
            "protocol": "kruxos.v1",
            "gateway_version": "0.1.0",
            "session_id": "sess-1",
            "key_name": "alice",
            "limits": {"max_message_bytes": 1_048_576, "max_in_flight": 64, "idle_timeout": 300.0},
        }
        self.requests: list[dict[str, Any]] = []
        self.headers: list[Headers] = []
        self.connections: list[ServerConnection] = []
        self.release = asyncio.Event()  # "test.wait" answers once this is set
        self.port = 0
        self.custom: Answer | None = None
        self._arrived = asyncio.Condition()

    async def wait_for_requests(self, count: int) -> None:
        """Return once ``count`` requests have arrived in total."""
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.requests) >= count), timeout(5))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def push(self, frame: dict[str, Any]) -> None:
        for connection in self.connections:
            await connection.send(json.dumps(frame))

    async def answer(self, request: dict[str, Any]) -> dict[str, Any] | None:
        if self.custom is not None:
            return await self.custom(request)
        rid, method, params = request["id"], request["method"], request.get("params", {})
        if method == "capabilities.list":
            caps = [c for c in CAPABILITIES if params.get("category") in (None, c["category"])]
            caps = [c for c in caps if params.get("tag") is None or params["tag"] in c["tags"]]
            return {"type": "response", "id": rid, "result": {"capabilities": caps}}
        if method == "capabilities.describe":
            found = [c for c in CAPABILITIES if c["name"] == params["name"]]
            if not found:
                return {"type": "error", "id": rid, "error": error_object("unknown_capability", "no such")}
            return {"type": "response", "id": rid, "result": {"capability": found[0]}}
        if method == "capabilities.invoke":
            name, inputs = params["name"], params["inputs"]
            if name == "test.echo":
                return {"type": "response", "id": rid, "result": result(name, data=inputs)}
            if name == "test.wait":
                await self.release.wait()
                return {"type": "response", "id": rid, "result": result(name, data=inputs)}
            if name == "test.never":
                return None
            if name == "test.close":
                await self.connections[-1].close(1011, "boom")
                return None
            if name == "filesystem.read":
                error = error_object("not_found", f"{inputs['path']} does not exist")
                return {"type": "response", "id": rid, "result": result(name, error=error)}
            return {"type": "error", "id": rid, "error": error_object("unknown_capability", f"no {name}")}
        return {"type": "error", "id": rid, "error": error_object("unknown_method", method)}

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.headers.append(request.headers)
        if self.refusal is None:
            return None
        status, headers, body = self.refusal
        response = connection.respond(HTTPStatus(status), json.dumps(body) + "\n")
        for name, value in headers.items():
            response.headers[name] = value
        return response

    async def handler(self, connection: ServerConnection) -> None:
        self.connections.append(connection)
        await connection.send(json.dumps(self.hello))
        tasks: set[asyncio.Task[None]] = set()
        async for message in connection:
            request = json.loads(message)
            async with self._arrived:
                self.requests.append(request)
                self._arrived.notify_all()
            task = asyncio.create_task(self._reply(connection, request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _reply(self, connection: ServerConnection, request: dict[str, Any]) -> None:
        frame = await self.answer(request)
        if frame is not None:
            await connection.send(json.dumps(frame))


@asynccontextmanager
async def running(gateway: FakeGateway) -> AsyncIterator[FakeGateway]:
    async with serve(
        gateway.handler,
        "127.0.0.1",
        0,
        subprotocols=["kruxos.v1"],  # type: ignore[list-item]
        process_request=gateway.process_request,
    ) as server:
        gateway.port = next(iter(server.sockets)).getsockname()[1]
        yield gateway
        gateway.release.set()
