"""MCP's transports at ``/mcp``: Streamable HTTP (2025-11-25) and a WebSocket (subprotocol ``mcp``).

Both authenticate every request with the key (``Authorization: Bearer``; 401 and a JSON error body
otherwise, never OAuth metadata: clients that see OAuth offered drop their static header), check
``Origin`` against DNS rebinding, and hand each JSON-RPC message to :class:`~.server.McpServer`
on behalf of the key.

Sessions: ``initialize`` over HTTP answers with an ``Mcp-Session-Id``; requests carrying it run in
that session (what ``state.session.*`` remembers, which transaction is open), ``DELETE`` ends it, an
unknown or expired id is 404. Each key holds at most ``MAX_SESSIONS_PER_KEY``; the least recently
used goes first, and one idle for ``SESSION_IDLE_SECONDS`` ends. A request without an id runs in a
session of its own, ended with the request. Over the WebSocket the connection is the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, hdrs, web

from ..core.protocol import CLOSE_KEY_REVOKED
from ..core.sessions import Caller, Sessions
from ..storage import store
from ..storage.db import Database
from ..transports.http import Connection, error_response, json_response
from .server import INVALID_REQUEST, PARSE_ERROR, PROTOCOL_VERSIONS, McpServer, rpc_error

__all__ = ["MAX_SESSIONS_PER_KEY", "PATH", "SESSION_IDLE_SECONDS", "McpEndpoint"]

log = logging.getLogger(__name__)

PATH = "/mcp"
SUBPROTOCOL = "mcp"
SESSION_HEADER = "Mcp-Session-Id"
# Sent by clients on every request after initialize (2025-06-18 on); absent: the client is older.
VERSION_HEADER = "MCP-Protocol-Version"
MAX_SESSIONS_PER_KEY = 32
SESSION_IDLE_SECONDS = 3600.0
# JSON-RPC error of a message refused because its key has too many being answered (server range).
TOO_MANY_REQUESTS = -32000
# A batch (2025-03-26 clients) is answered as one JSON array; it is bounded like a frame.
MAX_BATCH = 64
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a tool result may carry a whole file (filesystem.max_read_bytes)
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

#: Counts a connection held open for a key against ``quotas.connections`` until it ends; the 429 to
#: send when the key has none left (shared with the supervision endpoint: one count per key).
TakeKeySlot = Callable[[Connection, str], "web.Response | None"]
#: Checks a request's key: the live key, or the refusal to send (shared with the supervision
#: endpoint, so failed attempts count toward one per-address limit).
Authenticate = Callable[[web.Request], Awaitable["store.LiveKey | web.Response"]]


@dataclass(eq=False)
class _Session:
    caller: Caller
    used: float = field(default_factory=time.monotonic)


class McpEndpoint:
    """The routes of ``/mcp`` for one gateway."""

    def __init__(
        self,
        server: McpServer,
        sessions: Sessions,
        authenticate: Authenticate,
        take_key_slot: TakeKeySlot,
        db: Database,
        max_in_flight: int,
    ) -> None:
        self.server = server
        self.take_key_slot = take_key_slot
        self.db = db
        self.sessions = sessions
        self.authenticate = authenticate
        self._http_sessions: dict[str, OrderedDict[str, _Session]] = {}
        # Messages of each key being answered, over HTTP and WebSockets together: one key cannot
        # hold more of the gateway than limits.max_in_flight, as on one supervision connection.
        self.max_in_flight = max_in_flight
        self._in_flight: dict[str, int] = {}

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(PATH, self.post),
            web.get(PATH, self.get, allow_head=False),
            web.delete(PATH, self.delete),
        ]

    # --- Streamable HTTP ----------------------------------------------------------------------

    async def post(self, request: web.Request) -> web.StreamResponse:
        key = await self._key(request)
        if isinstance(key, web.Response):
            return key
        version = request.headers.get(VERSION_HEADER)
        if version is not None and version not in PROTOCOL_VERSIONS:
            return error_response(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                f"unsupported {VERSION_HEADER}: {version[:40]!r}",
                "use_known_version",
                "speak one of " + ", ".join(PROTOCOL_VERSIONS) + " (initialize negotiates one)",
                close=False,
            )
        try:
            message = json.loads(await request.text())
        except (ValueError, UnicodeDecodeError):
            return json_response(HTTPStatus.BAD_REQUEST, rpc_error(None, PARSE_ERROR, "the body is not JSON"))
        batch = isinstance(message, list)
        messages = message if batch else [message]
        if batch and not 0 < len(messages) <= MAX_BATCH:
            too_many = rpc_error(None, INVALID_REQUEST, f"a batch holds 1 to {MAX_BATCH} messages")
            return json_response(HTTPStatus.BAD_REQUEST, too_many)
        initializing = any(isinstance(m, dict) and m.get("method") == "initialize" for m in messages)
        session_id = request.headers.get(SESSION_HEADER)
        session: _Session | None = None
        if session_id is not None and not initializing:
            session = self._find(key.name, session_id)
            if session is None:
                return error_response(
                    HTTPStatus.NOT_FOUND,
                    "not_found",
                    "no such MCP session (it ended or expired)",
                    "initialize",
                    "send initialize again to start a new session",
                    close=False,
                )
        headers: list[tuple[str, str]] = []
        if session is None and initializing:
            session = await self._open(key.name)
            headers.append((SESSION_HEADER, session.caller.session_id))
        own = session is None  # no session asked for: this request runs in one of its own
        caller = session.caller if session is not None else Caller(key.name, "mcp-" + secrets.token_hex(16))
        if not self._enter(key.name):
            if own:
                await self.sessions.closed(caller)
            return self._busy(key.name)
        try:
            answers = [a for a in [await self.server.handle(caller, m) for m in messages] if a is not None]
        finally:
            self._leave(key.name)
            if own:
                await self.sessions.closed(caller)
        if not answers:
            return web.Response(status=HTTPStatus.ACCEPTED, headers=headers)
        return json_response(HTTPStatus.OK, answers if batch else answers[0], headers)  # type: ignore[arg-type]

    async def get(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get(hdrs.UPGRADE, "").lower() == "websocket":
            return await self.websocket(request)
        return error_response(
            HTTPStatus.METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "the gateway sends no server-initiated stream; POST MCP messages to /mcp",
            "post",
            "send JSON-RPC messages with POST /mcp (or open a WebSocket with subprotocol mcp)",
            headers=[("Allow", "POST, DELETE")],
            close=False,
        )

    async def delete(self, request: web.Request) -> web.StreamResponse:
        key = await self._key(request)
        if isinstance(key, web.Response):
            return key
        session_id = request.headers.get(SESSION_HEADER)
        held = self._http_sessions.get(key.name, OrderedDict())
        session = held.pop(session_id, None) if session_id is not None else None
        if session is None:
            return error_response(
                HTTPStatus.NOT_FOUND,
                "not_found",
                "no such MCP session",
                "none",
                "nothing to end",
                close=False,
            )
        await self.sessions.closed(session.caller)
        return web.Response(status=HTTPStatus.NO_CONTENT)

    # --- WebSocket ------------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        key = await self._key(request)
        if isinstance(key, web.Response):
            return key
        ws = web.WebSocketResponse(
            protocols=(SUBPROTOCOL,), compress=False, heartbeat=20.0, max_msg_size=64 << 20
        )
        if not ws.can_prepare(request):
            return error_response(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                "not a WebSocket handshake",
                "upgrade",
                "open a WebSocket (RFC 6455) to /mcp with subprotocol mcp",
            )
        connection = request.protocol
        if isinstance(connection, Connection):
            refusal = self.take_key_slot(connection, key.name)
            if refusal is not None:
                return refusal
        await ws.prepare(request)
        caller = Caller(key.name, "mcp-" + secrets.token_hex(16))
        self.sessions.opened(caller)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                # A key revoked since the handshake: its connection ends at its next message (HTTP
                # requests are refused at once, each checks its key).
                if await self.db.read(functools.partial(store.revoked_among, key_ids=[key.id])):
                    await ws.close(code=CLOSE_KEY_REVOKED, message=b"API key revoked")
                    break
                task = asyncio.create_task(self._answer_frame(ws, caller, frame.data))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            await self.sessions.closed(caller)
        return ws

    async def _answer_frame(self, ws: web.WebSocketResponse, caller: Caller, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            answer: Any = rpc_error(None, PARSE_ERROR, "the frame is not JSON")
        else:
            if not self._enter(caller.key_name):
                request_id = message.get("id") if isinstance(message, dict) else None
                answer = rpc_error(request_id, TOO_MANY_REQUESTS, self._busy_message(caller.key_name))
            else:
                try:
                    answer = await self.server.handle(caller, message)
                finally:
                    self._leave(caller.key_name)
        if answer is not None and not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.send_str(json.dumps(answer, ensure_ascii=False))

    # --- keys and sessions ----------------------------------------------------------------------

    def _enter(self, key_name: str) -> bool:
        held = self._in_flight.get(key_name, 0)
        if held >= self.max_in_flight:
            return False
        self._in_flight[key_name] = held + 1
        return True

    def _leave(self, key_name: str) -> None:
        held = self._in_flight[key_name] - 1
        if held:
            self._in_flight[key_name] = held
        else:
            del self._in_flight[key_name]

    def _busy_message(self, key_name: str) -> str:
        return f"key {key_name!r} already has {self.max_in_flight} MCP messages being answered"

    def _busy(self, key_name: str) -> web.Response:
        return error_response(
            HTTPStatus.TOO_MANY_REQUESTS,
            "too_many_requests",
            self._busy_message(key_name),
            "retry_later",
            "wait for an answer, then send the next message",
            headers=[("Retry-After", "1")],
            close=False,
        )

    async def _key(self, request: web.Request) -> store.LiveKey | web.Response:
        """The request's live key, or the refusal to send: a web page's (``Origin``), or the key's."""
        refusal = _origin_refusal(request)
        if refusal is not None:
            return refusal
        key = await self.authenticate(request)
        if isinstance(key, web.Response):
            return key
        connection = request.protocol
        if isinstance(connection, Connection):
            connection.authenticated()  # a keep-alive client with a key no longer waits in the gate
        return key

    async def _open(self, key_name: str) -> _Session:
        held = self._http_sessions.setdefault(key_name, OrderedDict())
        await self._expire(key_name)
        while len(held) >= MAX_SESSIONS_PER_KEY:
            _, oldest = held.popitem(last=False)
            await self.sessions.closed(oldest.caller)
        session = _Session(Caller(key_name, "mcp-" + secrets.token_hex(16)))
        held[session.caller.session_id] = session
        self.sessions.opened(session.caller)
        return session

    def _find(self, key_name: str, session_id: str) -> _Session | None:
        held = self._http_sessions.get(key_name)
        session = held.get(session_id) if held is not None else None
        if session is None or time.monotonic() - session.used > SESSION_IDLE_SECONDS:
            return None
        session.used = time.monotonic()
        held.move_to_end(session_id)  # type: ignore[union-attr]
        return session

    async def _expire(self, key_name: str) -> None:
        held = self._http_sessions.get(key_name, OrderedDict())
        now = time.monotonic()
        for session_id in [s for s, session in held.items() if now - session.used > SESSION_IDLE_SECONDS]:
            await self.sessions.closed(held.pop(session_id).caller)

    async def close(self) -> None:
        """At shutdown: end every HTTP session (their session state goes, as on a disconnect)."""
        for held in self._http_sessions.values():
            while held:
                _, session = held.popitem()
                await self.sessions.closed(session.caller)


def _origin_refusal(request: web.Request) -> web.Response | None:
    """403 for a request a web page made (it has an ``Origin``) unless page and gateway are both
    this machine's loopback names: a page elsewhere, or one that rebound its own name to the
    gateway's address (DNS rebinding, Host and Origin then agree), is refused. MCP clients that are
    programs send no ``Origin``."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return None
    try:
        origin_host = urlsplit(origin).hostname
    except ValueError:
        origin_host = None
    if origin_host in LOCAL_HOSTS and request.url.host in LOCAL_HOSTS:
        return None
    return error_response(
        HTTPStatus.FORBIDDEN,
        "forbidden",
        f"requests from the web origin {origin[:200]!r} are not accepted",
        "use_a_client",
        "connect from an MCP client, not from a web page",
        close=False,
    )
