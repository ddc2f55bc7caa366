"""The ``kruxos.v1`` endpoint (``/v1/supervision``): handshake auth, then one session per WebSocket.

Everything a frame means is decided by ``core.protocol.Session`` and ``core.gateway.Gateway``; this
module moves frames, enforces the per-connection limits and closes connections when it must.

What a client can hold, once its key is checked: ``max_in_flight`` requests, each counted until its
answer has been written out, and about ``max_queued_bytes`` of frames waiting in the transport. A
client that stops reading stops being read (backpressure, ``http.Connection``), and after
``idle_timeout`` without reading anything it is dropped. Each key has at most ``quotas.connections``
connections open (a handshake past it gets 429 ``quota_exceeded``).

The handshake only reads the database (on a reader, ``Database.read``): the key's ``last_used_at``
is submitted without waiting, so no handshake waits behind other agents' writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import WSMsgType, hdrs, web

from .._version import PROTOCOL, __version__
from ..config import GatewayConfig
from ..core import protocol
from ..core.gateway import Gateway
from ..core.models import ErrorInfo, EventFrame, HelloFrame, Limits, RecoveryAction, RequestFrame, ServerFrame
from ..core.sessions import Caller
from ..storage import store
from ..storage.db import Database
from .admission import REFUSAL_LOG_INTERVAL, peer_address
from .frames import ClientFrames
from .http import Connection, error_response, json_response
from .ratelimit import HandshakeLimiter

log = logging.getLogger(__name__)

PATHS = ("/", "/v1/supervision")
_BEARER = re.compile(r"Bearer ([0-9a-f]{64})")
# A message past this many times max_message_bytes is refused from its frame header (close 1009, no
# error frame); messages between the limit and this get a message_too_large error frame first.
HARD_SIZE_FACTOR = 4
KEEPALIVE_INTERVAL = 20.0
#: Seconds a close may take (the close frame waits behind what was queued) before the connection is
#: dropped instead.
CLOSE_TIMEOUT = 10.0


class _Outbox:
    """A session's server events, sent in push order by one task so that none overtakes another."""

    def __init__(self, live: _Live) -> None:
        self._live = live
        self._queue: asyncio.Queue[EventFrame] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None

    def push(self, event: str, data: dict[str, Any]) -> None:
        self._queue.put_nowait(EventFrame(event=event, data=data))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_queued())

    async def _send_queued(self) -> None:
        with contextlib.suppress(ConnectionError):
            while not self._queue.empty():
                await self._live.send_text(protocol.encode(self._queue.get_nowait()))

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender


@dataclass(eq=False)
class _Live:
    """One open session: its WebSocket, its protocol state and the tasks answering its requests."""

    connection: Connection
    transport: asyncio.Transport  # aiohttp forgets it once closing; a drop may still be needed
    ws: web.WebSocketResponse
    frames: ClientFrames
    session: protocol.Session
    key: store.LiveKey
    caller: Caller = field(init=False)
    outbox: _Outbox = field(init=False)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    closer: asyncio.Task[None] | None = None
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.outbox = _Outbox(self)
        self.caller = Caller(key_name=self.key.name, session_id=secrets.token_hex(16), events=self.outbox)

    async def send_text(self, text: str) -> None:
        """Send one frame once every frame before it has been handed to the transport, and the
        transport is below its high-water mark: it then holds at most ``max_queued_bytes`` and one
        frame, and what waits beyond that are the answers in flight. ``ConnectionError`` once closed.
        """
        async with self._send_lock:
            await self.connection.writable()
            await self.ws.send_str(text)

    def close(self, code: int, reason: str) -> asyncio.Task[None]:
        """Close with ``code`` (once; later calls return the same task)."""
        if self.closer is None:
            self.closer = asyncio.create_task(self._close(code, reason))
        return self.closer

    async def _close(self, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.ws.close(code=code, message=reason.encode())
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once, sending nothing more (not even a close frame)."""
        self.transport.abort()

    def drop_later(self) -> None:
        """Once the session is over: a transport still holding unsent bytes (its close frame behind
        what the client never read) is dropped after CLOSE_TIMEOUT, not kept open for good."""
        if self.transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.transport.abort)


class Supervision:
    """The ``kruxos.v1`` endpoint: its handshake and its live sessions."""

    def __init__(self, config: GatewayConfig, db: Database, app: Gateway) -> None:
        self.config = config
        self.db = db
        self.app = app
        self.limiter = HandshakeLimiter(
            config.auth.failed_handshake_limit, config.auth.failed_handshake_window
        )
        self.draining = False
        self.live: set[_Live] = set()
        # Connections per key name, from the handshake that let them in until they end (quotas.connections).
        self.connections_per_key: dict[str, int] = {}
        # Handshakes refused for that quota since the last log line about it, and when that was.
        self._quota_refusals: dict[str, tuple[int, float]] = {}

    def routes(self) -> list[web.RouteDef]:
        return [web.get(path, self.handshake, allow_head=False) for path in PATHS]

    # --- handshake ------------------------------------------------------------------------------

    async def handshake(self, request: web.Request) -> web.StreamResponse:
        """Check the key before upgrading; a refused handshake is a JSON HTTP error (docs/protocol.md)."""
        if self.draining:
            return error_response(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "unavailable",
                "the gateway is shutting down",
                "reconnect_later",
                "reconnect once the gateway is back",
            )
        offered = [
            p.strip()
            for value in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
            for p in value.split(",")
        ]
        if PROTOCOL not in offered:
            return error_response(
                HTTPStatus.UPGRADE_REQUIRED,
                "unsupported_protocol",
                f"the gateway speaks the subprotocol {PROTOCOL}; offered: {', '.join(offered) or 'none'}",
                "offer_subprotocol",
                f"send Sec-WebSocket-Protocol: {PROTOCOL}",
            )
        connection = request.protocol
        assert isinstance(connection, Connection)
        key = await self.authenticate(request)
        if isinstance(key, web.Response):
            return key
        limits = self.config.limits
        ws = web.WebSocketResponse(
            protocols=(PROTOCOL,),
            compress=False,  # kruxos.v1 frames are small JSON: zlib costs more than it saves
            heartbeat=KEEPALIVE_INTERVAL,
            # ClientFrames refuses what is past the hard limit, from the frame header; aiohttp's
            # own check (made only once the whole message is in) is never the one that trips.
            max_msg_size=limits.max_message_bytes * HARD_SIZE_FACTOR + 1,
        )
        if not ws.can_prepare(request):
            return error_response(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                "not a WebSocket handshake (Upgrade, Connection, Sec-WebSocket-Key or -Version)",
                "upgrade",
                "open a WebSocket connection (RFC 6455) to /v1/supervision",
            )
        refusal = self.take_key_slot(connection, key.name)
        if refusal is not None:
            return refusal
        connection.authenticated()
        assert request.transport is not None
        live = _Live(
            connection,
            request.transport,
            ws,
            ClientFrames(limits.max_message_bytes * HARD_SIZE_FACTOR),
            protocol.Session(
                max_message_bytes=limits.max_message_bytes,
                max_in_flight=limits.max_in_flight,
                methods=self.app.methods.names,
            ),
            key,
        )
        connection.watch_frames(
            live.frames,
            functools.partial(live.close, protocol.CLOSE_MESSAGE_TOO_BIG, "message too big"),
            limits.max_queued_bytes,
        )
        # The header names the one protocol offered in any of the client's headers (aiohttp's own
        # choice looks at the first only).
        ws.headers[hdrs.SEC_WEBSOCKET_PROTOCOL] = PROTOCOL
        await ws.prepare(request)
        await self._run(live, request.remote or "unknown")
        return ws

    async def authenticate(self, request: web.Request) -> store.LiveKey | web.Response:
        """The live key ``request`` carries (``Authorization: Bearer``), or the refusal to send:
        every route of the port that needs a key checks it here, so that failed attempts count
        toward one limit per address (``auth.failed_handshake_limit``)."""
        address = peer_address(request.transport) if request.transport is not None else "unknown"
        key = await self._check_key(request, address)
        if isinstance(key, web.Response):
            return self._failed_handshake(address, key)
        return key

    async def _check_key(self, request: web.Request, address: str) -> store.LiveKey | web.Response:
        """The live key the request carries, or the refusal to send if it carries none.

        The key is checked before the failed-handshake limiter is consulted, and whatever the
        limiter says, a valid key is let in: keys are 256 random bits, which no number of attempts
        guesses, and an agent that makes its own address fail (network.http_request to the gateway
        with a bad key) must not lock out every agent behind that address.
        """
        values = request.headers.getall(hdrs.AUTHORIZATION, ())
        if not values:
            return error_response(
                HTTPStatus.UNAUTHORIZED,
                "authentication_failed",
                "no API key was sent",
                "send_key",
                "send Authorization: Bearer <key>, a key from `kruxosctl keys create NAME`",
            )
        match = _BEARER.fullmatch(values[0]) if len(values) == 1 else None
        if match is None:
            return error_response(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                "malformed Authorization header: expected 'Bearer ' and 64 lowercase hex characters",
                "fix_header",
                "send exactly one header: Authorization: Bearer <64 lowercase hex characters>",
            )
        # A read (Database.read): no handshake waits behind other agents' writes. Its use is
        # recorded off the handshake's path, in one statement with the handshakes around it.
        key = await self.db.read(functools.partial(store.find_key, key=match.group(1)))
        if key is None:
            log.info("refused handshake from %s: invalid or revoked API key", address)
            return error_response(
                HTTPStatus.UNAUTHORIZED,
                "authentication_failed",
                "invalid or revoked API key",
                "check_key",
                "ask the operator for a valid key (kruxosctl keys list shows which exist)",
            )
        self.db.submit_row(store.record_key_uses, (key.id, store.now()))
        return key

    def _failed_handshake(self, address: str, refusal: web.Response) -> web.Response:
        """Count a handshake without a valid key; past the limit, answer 429 instead of ``refusal``.

        A 429 is not counted: the limit lifts ``failed_handshake_window`` seconds after the failures
        that set it, as its Retry-After says, however often the address keeps trying meanwhile.
        """
        retry_after = self.limiter.retry_after(address)
        if retry_after is not None:
            return error_response(
                HTTPStatus.TOO_MANY_REQUESTS,
                "rate_limited",
                f"too many failed handshakes from {address}; retry in {retry_after} s",
                "wait",
                f"wait {retry_after} seconds, then connect with a valid API key",
                headers=[("Retry-After", str(retry_after))],
            )
        self.limiter.record_failure(address)
        return refusal

    def take_key_slot(self, connection: Connection, name: str) -> web.Response | None:
        """Count ``connection`` for its key until it ends; the 429 to send if the key has no slot left.
        Every route that holds a connection open for a key (this one, MCP's WebSocket) counts it here.

        The key is valid: this is not a failed handshake, and the failed-handshake limiter does not
        count it.
        """
        limit = self.config.quotas.connections
        used = self.connections_per_key.get(name, 0)
        if used >= limit:
            self._log_quota_refusal(name, used)
            info = ErrorInfo(
                type="quota_exceeded",
                message=f"the API key {name!r} already has {used} connections open, its quota of {limit} "
                "(quotas.connections)",
                recovery=[
                    RecoveryAction(
                        action="make_room", description="close a connection of this key, then connect again"
                    ),
                    RecoveryAction(
                        action="ask_operator",
                        description="ask the operator to raise quotas.connections in the gateway's "
                        "configuration",
                    ),
                ],
                details={"quota": "quotas.connections", "used": used, "limit": limit},
            )
            response = json_response(HTTPStatus.TOO_MANY_REQUESTS, {"error": info.model_dump(mode="json")})
            response.force_close()
            return response
        self.connections_per_key[name] = used + 1
        connection.release_key_slot = functools.partial(self._release_key_slot, name)
        return None

    def _log_quota_refusal(self, name: str, used: int) -> None:
        """A warning for the key, at most one per REFUSAL_LOG_INTERVAL: a key that keeps trying must
        not become a flood of log lines."""
        refused, logged_at = self._quota_refusals.get(name, (0, -math.inf))
        now = time.monotonic()
        if now - logged_at < REFUSAL_LOG_INTERVAL:
            self._quota_refusals[name] = (refused + 1, logged_at)
            return
        log.warning(
            "refused %d handshake(s) of key %s since the last such line: it has %d connections open, "
            "its quota (quotas.connections)",
            refused + 1,
            name,
            used,
        )
        self._quota_refusals[name] = (0, now)

    def _release_key_slot(self, name: str) -> None:
        left = self.connections_per_key.get(name, 1) - 1
        if left > 0:
            self.connections_per_key[name] = left
        else:
            self.connections_per_key.pop(name, None)

    # --- sessions -------------------------------------------------------------------------------

    async def _run(self, live: _Live, address: str) -> None:
        if self.draining:  # since the handshake began
            await live.close(protocol.CLOSE_GOING_AWAY, "draining")
            return
        limits = self.config.limits
        self.live.add(live)
        log.info("session %s opened for key %s from %s", live.caller.session_id, live.key.name, address)
        hello = HelloFrame(
            protocol=PROTOCOL,
            gateway_version=__version__,
            session_id=live.caller.session_id,
            key_name=live.key.name,
            limits=Limits(
                max_message_bytes=limits.max_message_bytes,
                max_in_flight=limits.max_in_flight,
                idle_timeout=limits.idle_timeout,
            ),
        )
        idle = asyncio.create_task(self._close_when_idle(live))
        try:
            await self._send(live, hello)
            self.app.session_opened(live.caller)
            live.connection.take_texts(functools.partial(self._receive, live))
            # What take_texts leaves to aiohttp (fragmented or binary messages): the loop ends when the
            # connection closes (either side) or fails (a protocol error, closed with its code).
            async for message in live.ws:
                if message.type is WSMsgType.TEXT or message.type is WSMsgType.BINARY:
                    self._receive(live, message.data)
                else:
                    break
        finally:
            idle.cancel()
            self.live.discard(live)
            for task in live.tasks:
                task.cancel()
            await asyncio.gather(idle, *live.tasks, return_exceptions=True)
            if live.closer is not None:
                await asyncio.gather(live.closer, return_exceptions=True)
            await live.outbox.close()
            live.drop_later()
            await self.app.session_closed(live.caller)
            log.info("session %s closed (%s)", live.caller.session_id, live.ws.close_code)

    def _receive(self, live: _Live, message: str | bytes) -> None:
        """One message from the client: its answer or error is sent by a task of its own. Called from
        the connection's data_received (take_texts) or for what receive() returns; it must not raise.
        """
        try:
            action = live.session.receive(message)
            if isinstance(action, protocol.Reply):
                self._track(live, self._reply(live, action))
            else:
                self._track(live, self._answer(live, action.request))
        except Exception:
            log.exception("session %s: failed to handle a frame; closing", live.caller.session_id)
            live.close(1011, "internal error")

    @staticmethod
    def _track(live: _Live, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        live.tasks.add(task)
        task.add_done_callback(live.tasks.discard)

    async def _reply(self, live: _Live, action: protocol.Reply) -> None:
        """Send an error frame; close the connection if the error calls for it."""
        await self._send(live, action.frame)
        if action.close_code is not None:
            live.close(action.close_code, action.close_reason)

    async def _answer(self, live: _Live, request: RequestFrame) -> None:
        # In flight until its answer is written to the transport, not merely built: max_in_flight
        # then bounds the answers a client that does not read can make the gateway hold.
        try:
            await self._send(live, await self.app.handle(live.caller, request))
        finally:
            live.session.complete(request.id)

    @staticmethod
    async def _send(live: _Live, frame: ServerFrame) -> None:
        with contextlib.suppress(ConnectionError):
            await live.send_text(protocol.encode(frame))

    async def _close_when_idle(self, live: _Live) -> None:
        timeout = self.config.limits.idle_timeout
        connection = live.connection
        while True:
            now = time.monotonic()
            remaining = live.frames.last_activity + timeout - now
            if remaining <= 0 and not live.session.in_flight:
                log.info("session %s idle for %s s; closing", live.caller.session_id, timeout)
                live.close(protocol.CLOSE_GOING_AWAY, "idle timeout")
                return
            blocked = connection.write_blocked_since
            if blocked is not None and now - blocked >= timeout:
                # Its requests stay in flight while their answers wait, so it never looks idle; and
                # a close frame would wait behind them too.
                log.warning(
                    "session %s has read nothing it was sent for %s s; dropping it",
                    live.caller.session_id,
                    timeout,
                )
                live.abort()
                return
            wait = remaining if blocked is None else min(remaining, blocked + timeout - now)
            await asyncio.sleep(max(wait, 0.05))

    # --- revoked keys and shutdown --------------------------------------------------------------

    async def close_revoked(self) -> int:
        """Close (4401) every connection whose key was revoked after its handshake; how many."""
        live = list(self.live)
        if not live:
            return 0
        revoked = await self.db.read(functools.partial(store.revoked_among, key_ids=[c.key.id for c in live]))
        doomed = [c for c in live if c.key.id in revoked]
        for conn in doomed:
            log.warning(
                "closing session %s: API key %s was revoked", conn.caller.session_id, conn.caller.key_name
            )
        await asyncio.gather(*(c.close(protocol.CLOSE_KEY_REVOKED, "API key revoked") for c in doomed))
        return len(doomed)

    async def drain(self) -> None:
        """Refuse new work, tell clients, let requests finish (up to drain_timeout), then close the
        sessions with 1001."""
        self.draining = True
        live = list(self.live)
        timeout = self.config.limits.drain_timeout
        log.info("draining: %d connection(s), up to %s s", len(live), timeout)
        for conn in live:
            conn.session.draining = True
        self._drop_stalled(live)
        announced = [asyncio.create_task(self._send(c, protocol.shutdown_event())) for c in live]
        requests = [task for conn in live for task in conn.tasks]
        if announced or requests:
            # One deadline for both: an announcement to a client that stops reading now waits no longer.
            _, unfinished = await asyncio.wait([*announced, *requests], timeout=timeout)
            if cancelled := unfinished.difference(announced):
                log.warning("drain timeout: cancelling %d request(s) still in flight", len(cancelled))
            for task in unfinished:
                task.cancel()
        self._drop_stalled(live)
        await asyncio.gather(*(c.close(protocol.CLOSE_GOING_AWAY, "") for c in self.live))

    @staticmethod
    def _drop_stalled(live: list[_Live]) -> None:
        """Abort the connections whose client is not reading: nothing more reaches it, not even the
        close frame it would be sent, which would wait behind the rest for good."""
        for conn in live:
            if conn.connection.write_blocked_since is not None:
                log.warning("session %s is not reading what it is sent; dropping it", conn.caller.session_id)
                conn.abort()
