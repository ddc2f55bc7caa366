"""The thin websockets adapter: HTTP health, handshake auth, and one task per request.

Everything a frame means is decided by ``protocol.Session`` and ``app.Gateway``; this module only
moves bytes, enforces the timeouts and limits, and runs the shutdown sequence.

What a client can hold is bounded here. Before its key is checked: a few connections (in total and
per address, ``ratelimit.ConnectionGate``), each refused the moment it is accepted past the limits.
After: ``max_in_flight`` requests, each counted until its answer has been written out, and about
``max_queued_bytes`` of frames waiting in the transport. A client that stops reading stops being
read (backpressure), and after ``idle_timeout`` without reading anything it is dropped. Each key has at
most ``quotas.connections`` connections open (a handshake past it gets 429 ``quota_exceeded``).

The handshake only reads the database (on a reader, ``db.Database.read``): the key's ``last_used_at``
is submitted without waiting, so no handshake waits behind other agents' writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import json
import logging
import math
import re
import resource
import secrets
import time
import urllib.parse
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, ClassVar, cast

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .._version import PROTOCOL, __version__
from ..config import GatewayConfig
from ..core import protocol
from ..core.gateway import Gateway
from ..core.models import ErrorInfo, EventFrame, HelloFrame, Limits, RecoveryAction, RequestFrame, ServerFrame
from ..core.sessions import Caller
from ..storage import store
from ..storage.db import Database
from .ratelimit import ConnectionGate, HandshakeLimiter

log = logging.getLogger(__name__)

SUPERVISION_PATHS = frozenset({"/", "/v1/supervision"})
_BEARER = re.compile(r"Bearer ([0-9a-f]{64})")
# websockets itself drops frames past this many times max_message_bytes (close 1009, no error
# frame); frames between the limit and this get a message_too_large error frame first.
HARD_SIZE_FACTOR = 4
KEEPALIVE_INTERVAL = 20.0
# Refused connections are logged at most this often (with how many there were): a flood of them
# must not become a flood of log lines.
REFUSAL_LOG_INTERVAL = 10.0


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else "unknown"


#: Seconds a connection has for its handshake before a newcomer from a full address may take its
#: place. On the device every local agent connects from 127.0.0.1: without this, one agent holding
#: that address's quota of idle connections would keep every other local agent out.
EVICTION_GRACE = 1.0


@dataclass
class _Admission:
    """One server's gate for connections not yet authenticated, and the log of what it refuses."""

    gate: ConnectionGate
    refused: int = 0
    logged_at: float = -math.inf
    # The connections counted in the gate, longest-waiting first, with their address and arrival.
    waiting: OrderedDict[_Connection, tuple[str, float]] = field(default_factory=OrderedDict)

    def admit(self, connection: _Connection, transport: asyncio.BaseTransport) -> str | None:
        """The peer's address if this new connection may go on to its handshake, else ``None``.

        When the gate is full for its address, the longest-waiting connection that has had
        ``EVICTION_GRACE`` for its handshake (from that address, or from any when all are full) is
        closed to make room: a handshake on the device takes milliseconds, so only a connection
        held open without one is ever closed this way.
        """
        address = _peer(transport)
        sock = transport.get_extra_info("socket")
        descriptor = sock.fileno() if sock is not None else -1
        reason = self.gate.admit(address, descriptor)
        if reason is not None and self.gate.is_full(address) and self._evict_stale(address):
            reason = self.gate.admit(address, descriptor)
        if reason is None:
            self.waiting[connection] = (address, time.monotonic())
            return address
        self.refused += 1
        now = time.monotonic()
        if now - self.logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning(
                "refused %d connection(s) before a handshake since the last such line, the last from %s: %s",
                self.refused,
                address,
                reason,
            )
            self.refused, self.logged_at = 0, now
        return None

    def _evict_stale(self, address: str) -> bool:
        only_this_address = self.gate.total > self.gate.count  # the address is full, not the gate
        now = time.monotonic()
        for connection, (from_address, since) in self.waiting.items():
            if now - since < EVICTION_GRACE:
                return False  # oldest first: every one after it is younger
            if only_this_address and from_address != address:
                continue
            connection.evict()
            return True
        return False


class _Connection(ServerConnection):
    """A connection that remembers when the client last sent a frame (pongs excluded), and hands each
    complete text frame to ``on_text`` as it arrives.

    websockets queues received messages for ``recv()``; the handler reading them from there is one more
    trip through the event loop per request before the request's own task even starts. Called from the
    connection's ``data_received``, ``on_text`` starts that task directly (bench/gateway_bench.py).
    Until ``on_text`` is set (before ``hello``), and from the first fragmented or binary message on,
    messages go the usual way, through ``recv()``: switching for good keeps them in arrival order.

    It also holds the connection to its limits: it counts against ``admission`` until it has
    authenticated, and it sends frames one at a time (``send_frame``), reading no requests while the
    client is not reading what was sent.
    """

    # Set on the subclass each server makes (``_connection_type``).
    admission: ClassVar[_Admission]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_activity = time.monotonic()
        self.on_text: Callable[[str], None] | None = None
        # The address this connection counts for in the gate, until it authenticates or ends.
        self._unauthenticated_from: str | None = None
        self._refused = False
        # Gives back the key's connection slot (quotas.connections) once, when the connection ends.
        self.release_key_slot: Callable[[], None] | None = None
        self._send_lock = asyncio.Lock()
        # Since when the transport holds more than max_queued_bytes (None: it does not).
        self.write_blocked_since: float | None = None

    # --- admission --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = self.admission.admit(self, transport)
        if address is None:
            # Closed before websockets sees it: no handshake task, no timeout, nothing logged per
            # connection, and its descriptor is free again at once.
            self._refused = True
            cast(asyncio.Transport, transport).abort()
            return
        self._unauthenticated_from = address
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._leave_gate()
        release, self.release_key_slot = self.release_key_slot, None
        if release is not None:
            release()
        super().connection_lost(exc)

    def authenticated(self) -> None:
        """Its handshake proved a key: it no longer counts against the unauthenticated limits."""
        self._leave_gate()

    def _leave_gate(self) -> None:
        if self._unauthenticated_from is not None:
            self.admission.gate.release(self._unauthenticated_from)
            self.admission.waiting.pop(self, None)
            self._unauthenticated_from = None

    def evict(self) -> None:
        """Close a connection that waited too long for its handshake, to make room for another."""
        self._leave_gate()
        self.transport.abort()

    # --- sending, with backpressure ----------------------------------------------------------

    async def send_frame(self, text: str) -> None:
        """Send one frame after every frame before it has been handed to the transport.

        ``send`` writes at once and only then waits for the transport to drain, so concurrent
        callers would each add a frame to its buffer: one at a time, the buffer holds at most
        ``max_queued_bytes`` and one frame, and what waits beyond that are the answers in flight.
        """
        async with self._send_lock:
            await self.send(text)

    def pause_writing(self) -> None:
        super().pause_writing()
        # The client does not read what it is sent: read nothing more from it either until it does,
        # or every request it sends meanwhile would queue one more answer (if only an error).
        self.write_blocked_since = time.monotonic()
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_blocked_since = None
        if not self.recv_messages.paused:  # websockets pauses reading too, while recv() lags
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # websockets resumes reading once recv() catches up, unaware of the pause for writing.
        if self.write_blocked_since is not None:
            self.transport.pause_reading()

    def process_event(self, event: Any) -> None:
        # Our keepalive pings are answered by pongs: those must not keep an idle client alive.
        if isinstance(event, Frame) and event.opcode is not Opcode.PONG:
            self.last_activity = time.monotonic()
            on_text = self.on_text
            if on_text is not None:
                if event.opcode is Opcode.TEXT and event.fin:
                    try:
                        text = bytes(event.data).decode()
                    except UnicodeDecodeError:
                        pass  # recv() raises it as the protocol error it is
                    else:
                        on_text(text)
                        return
                if event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                    self.on_text = None
        super().process_event(event)


def _connection_type(admission: _Admission) -> type[_Connection]:
    """The connection class of one server: its connections count against that server's limits."""

    class Connection(_Connection):
        pass

    Connection.admission = admission
    return Connection


class _Outbox:
    """A connection's server events, sent in push order by one task so that none overtakes another."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._queue: asyncio.Queue[EventFrame] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None

    def push(self, event: str, data: dict[str, Any]) -> None:
        self._queue.put_nowait(EventFrame(event=event, data=data))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_queued())

    async def _send_queued(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while not self._queue.empty():
                await self._connection.send_frame(protocol.encode(self._queue.get_nowait()))

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender


@dataclass(eq=False)
class _Live:
    connection: _Connection
    session: protocol.Session
    caller: Caller
    outbox: _Outbox
    key_id: int
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


def _json_response(
    status: HTTPStatus, body: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    data = json.dumps(body).encode("utf-8")
    return Response(
        status.value,
        status.phrase,
        Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Connection", "close"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
                *headers,
            ]
        ),
        data,
    )


def raise_descriptor_limit() -> int | None:
    """Raise this process's soft limit on open file descriptors to its hard limit (the unit sets
    both with LimitNOFILE=); return the soft limit now in force, ``None`` if there is none."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit, above the kernel's nr_open
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
        else:
            soft = hard
    return None if soft == resource.RLIM_INFINITY else soft


def _refusal(status: HTTPStatus, error_type: str, message: str, action: str, description: str) -> Response:
    info = ErrorInfo(
        type=error_type, message=message, recovery=[RecoveryAction(action=action, description=description)]
    )
    return _json_response(status, {"error": info.model_dump(mode="json")})


class GatewayServer:
    """The gateway's listening socket and its connections."""

    def __init__(self, config: GatewayConfig, db: Database, app: Gateway) -> None:
        self.config = config
        self.db = db
        self.app = app
        self.limiter = HandshakeLimiter(
            config.auth.failed_handshake_limit, config.auth.failed_handshake_window
        )
        self.draining = False
        self._server: Server | None = None
        # Filled by the handshake, emptied by the handler; weak so an aborted handshake leaves nothing.
        self._authenticated: weakref.WeakKeyDictionary[ServerConnection, store.LiveKey] = (
            weakref.WeakKeyDictionary()
        )
        self._live: set[_Live] = set()
        # Connections per key name, from the handshake that let them in until they end (quotas.connections).
        self._connections_per_key: dict[str, int] = {}
        # Handshakes refused for that quota since the last log line about it, and when that was.
        self._quota_refusals: dict[str, tuple[int, float]] = {}
        self._check_revocations = asyncio.Event()
        self._revocation_watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        limits = self.config.limits
        self._server = await serve(
            self._handle,
            self.config.listen.host,
            self.config.listen.port,
            process_request=self._process_request,
            subprotocols=[Subprotocol(PROTOCOL)],
            create_connection=_connection_type(_Admission(self._connection_gate())),
            max_size=limits.max_message_bytes * HARD_SIZE_FACTOR,
            # Past this many bytes in the transport a send waits for the client to read (and the
            # connection stops reading requests, _Connection.pause_writing) until a quarter is left.
            write_limit=limits.max_queued_bytes,
            open_timeout=limits.handshake_timeout,
            ping_interval=KEEPALIVE_INTERVAL,
            ping_timeout=KEEPALIVE_INTERVAL,
            server_header=f"kruxos-gateway/{__version__}",
            # No permessage-deflate (websockets negotiates it by default): kruxos.v1 frames are small
            # JSON on loopback or a LAN, where zlib on both ends costs more than the bytes it saves
            # (bench/gateway_bench.py); a client that offers it simply gets plain frames.
            compression=None,
        )
        self._revocation_watch = asyncio.create_task(self._watch_revocations())

    def _connection_gate(self) -> ConnectionGate:
        """The limits on unauthenticated connections, given the descriptors this process may open."""
        limits = self.config.limits
        soft = raise_descriptor_limit()
        ceiling = None
        if soft is not None:
            # Half of a small limit at most: the other half is for connections to be accepted at all.
            reserve = min(limits.reserved_descriptors, soft // 2)
            if reserve < limits.reserved_descriptors:
                log.warning(
                    "only %d file descriptors may be open (RLIMIT_NOFILE): %d are kept for authenticated "
                    "agents instead of limits.reserved_descriptors=%d; raise LimitNOFILE= in the unit",
                    soft,
                    reserve,
                    limits.reserved_descriptors,
                )
            ceiling = soft - reserve
        return ConnectionGate(
            limits.max_unauthenticated_connections, limits.max_unauthenticated_per_address, ceiling
        )

    @property
    def address(self) -> tuple[str, int]:
        """The host and port actually listened on (the port is real even if 0 was configured)."""
        assert self._server is not None
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        return str(host), int(port)

    # --- handshake ------------------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urllib.parse.urlsplit(request.path).path
        if path == "/health":
            if self.draining:
                return _json_response(
                    HTTPStatus.SERVICE_UNAVAILABLE, {"status": "draining", "version": __version__}
                )
            return _json_response(HTTPStatus.OK, {"status": "ok", "version": __version__})
        if path not in SUPERVISION_PATHS:
            return _refusal(
                HTTPStatus.NOT_FOUND,
                "not_found",
                f"nothing is served at {path}",
                "use_supervision_path",
                "connect to /v1/supervision (or GET /health)",
            )
        if self.draining:
            return _refusal(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "unavailable",
                "the gateway is shutting down",
                "reconnect_later",
                "reconnect once the gateway is back",
            )
        offered = [
            p.strip() for value in request.headers.get_all("Sec-WebSocket-Protocol") for p in value.split(",")
        ]
        if PROTOCOL not in offered:
            return _refusal(
                HTTPStatus.UPGRADE_REQUIRED,
                "unsupported_protocol",
                f"the gateway speaks the subprotocol {PROTOCOL}; offered: {', '.join(offered) or 'none'}",
                "offer_subprotocol",
                f"send Sec-WebSocket-Protocol: {PROTOCOL}",
            )
        address = str(connection.remote_address[0]) if connection.remote_address else "unknown"
        key = await self._authenticate(request, address)
        if isinstance(key, Response):
            return self._failed_handshake(address, key)
        assert isinstance(connection, _Connection)
        refusal = self._take_key_slot(connection, key.name)
        if refusal is not None:
            return refusal
        connection.authenticated()
        self._authenticated[connection] = key
        return None

    def _take_key_slot(self, connection: _Connection, name: str) -> Response | None:
        """Count ``connection`` for its key until it ends; the 429 to send if the key has no slot left.

        The key is valid: this is not a failed handshake, and the failed-handshake limiter does not
        count it.
        """
        limit = self.config.quotas.connections
        used = self._connections_per_key.get(name, 0)
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
            return _json_response(HTTPStatus.TOO_MANY_REQUESTS, {"error": info.model_dump(mode="json")})
        self._connections_per_key[name] = used + 1
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
        left = self._connections_per_key.get(name, 1) - 1
        if left > 0:
            self._connections_per_key[name] = left
        else:
            self._connections_per_key.pop(name, None)

    async def _authenticate(self, request: Request, address: str) -> store.LiveKey | Response:
        """The live key the request carries, or the refusal to send if it carries none.

        The key is checked before the failed-handshake limiter is consulted, and whatever the
        limiter says, a valid key is let in: keys are 256 random bits, which no number of attempts
        guesses, and an agent that makes its own address fail (network.http_request to the gateway
        with a bad key) must not lock out every agent behind that address.
        """
        values = request.headers.get_all("Authorization")
        if not values:
            return _refusal(
                HTTPStatus.UNAUTHORIZED,
                "authentication_failed",
                "no API key was sent",
                "send_key",
                "send Authorization: Bearer <key>, a key from `kruxosctl keys create NAME`",
            )
        match = _BEARER.fullmatch(values[0]) if len(values) == 1 else None
        if match is None:
            return _refusal(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                "malformed Authorization header: expected 'Bearer ' and 64 lowercase hex characters",
                "fix_header",
                "send exactly one header: Authorization: Bearer <64 lowercase hex characters>",
            )
        # A read (db.Database.read): no handshake waits behind other agents' writes. Its use is
        # recorded off the handshake's path, in one statement with the handshakes around it.
        key = await self.db.read(functools.partial(store.find_key, key=match.group(1)))
        if key is not None:
            self.db.submit_row(store.record_key_uses, (key.id, store.now()))
        if key is None:
            log.info("refused handshake from %s: invalid or revoked API key", address)
            return _refusal(
                HTTPStatus.UNAUTHORIZED,
                "authentication_failed",
                "invalid or revoked API key",
                "check_key",
                "ask the operator for a valid key (kruxosctl keys list shows which exist)",
            )
        return key

    def _failed_handshake(self, address: str, refusal: Response) -> Response:
        """Count a handshake without a valid key; past the limit, answer 429 instead of ``refusal``.

        A 429 is not counted: the limit lifts ``failed_handshake_window`` seconds after the failures
        that set it, as its Retry-After says, however often the address keeps trying meanwhile.
        """
        retry_after = self.limiter.retry_after(address)
        if retry_after is not None:
            response = _refusal(
                HTTPStatus.TOO_MANY_REQUESTS,
                "rate_limited",
                f"too many failed handshakes from {address}; retry in {retry_after} s",
                "wait",
                f"wait {retry_after} seconds, then connect with a valid API key",
            )
            response.headers["Retry-After"] = str(retry_after)
            return response
        self.limiter.record_failure(address)
        return refusal

    # --- connections ----------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        assert isinstance(connection, _Connection)
        key_id, key_name = self._authenticated.pop(connection)
        if self.draining:
            await connection.close(protocol.CLOSE_GOING_AWAY, "draining")
            return
        limits = self.config.limits
        outbox = _Outbox(connection)
        live = _Live(
            connection,
            protocol.Session(
                max_message_bytes=limits.max_message_bytes,
                max_in_flight=limits.max_in_flight,
                methods=self.app.methods.names,
            ),
            Caller(key_name=key_name, session_id=secrets.token_hex(16), events=outbox),
            outbox,
            key_id,
        )
        self._live.add(live)
        log.info(
            "session %s opened for key %s from %s",
            live.caller.session_id,
            key_name,
            connection.remote_address,
        )
        hello = HelloFrame(
            protocol=PROTOCOL,
            gateway_version=__version__,
            session_id=live.caller.session_id,
            key_name=key_name,
            limits=Limits(
                max_message_bytes=limits.max_message_bytes,
                max_in_flight=limits.max_in_flight,
                idle_timeout=limits.idle_timeout,
            ),
        )
        idle = asyncio.create_task(self._close_when_idle(live))
        try:
            await self._send(connection, hello)
            self.app.session_opened(live.caller)
            connection.on_text = functools.partial(self._receive, live)
            # From here on, recv() sees only what _Connection leaves to it (fragmented or binary
            # messages); the loop ends when the connection closes.
            async for message in connection:
                self._receive(live, message)
        except ConnectionClosed:
            pass
        finally:
            idle.cancel()
            self._live.discard(live)
            for task in live.tasks:
                task.cancel()
            await asyncio.gather(idle, *live.tasks, return_exceptions=True)
            await live.outbox.close()
            await self.app.session_closed(live.caller)
            log.info("session %s closed (%s)", live.caller.session_id, connection.close_code)

    def _receive(self, live: _Live, message: str | bytes) -> None:
        """One message from the client: its answer or error is sent by a task of its own. Called from
        the connection's data_received (see _Connection) or for what recv() returns; it must not raise.
        """
        try:
            action = live.session.receive(message)
            if isinstance(action, protocol.Reply):
                self._track(live, asyncio.create_task(self._reply(live, action)))
            else:
                self._track(live, asyncio.create_task(self._answer(live, action.request)))
        except Exception:
            log.exception("session %s: failed to handle a frame; closing", live.caller.session_id)
            self._track(live, asyncio.create_task(live.connection.close(1011, "internal error")))

    @staticmethod
    def _track(live: _Live, task: asyncio.Task[Any]) -> None:
        live.tasks.add(task)
        task.add_done_callback(live.tasks.discard)

    async def _reply(self, live: _Live, action: protocol.Reply) -> None:
        """Send an error frame; close the connection if the error calls for it."""
        await self._send(live.connection, action.frame)
        if action.close_code is not None:
            await live.connection.close(action.close_code, action.close_reason)

    async def _answer(self, live: _Live, request: RequestFrame) -> None:
        # In flight until its answer is written to the transport, not merely built: max_in_flight
        # then bounds the answers a client that does not read can make the gateway hold.
        try:
            await self._send(live.connection, await self.app.handle(live.caller, request))
        finally:
            live.session.complete(request.id)

    async def _send(self, connection: _Connection, frame: ServerFrame) -> None:
        with contextlib.suppress(ConnectionClosed):
            await connection.send_frame(protocol.encode(frame))

    async def _close_when_idle(self, live: _Live) -> None:
        timeout = self.config.limits.idle_timeout
        connection = live.connection
        while True:
            now = time.monotonic()
            remaining = connection.last_activity + timeout - now
            if remaining <= 0 and not live.session.in_flight:
                log.info("session %s idle for %s s; closing", live.caller.session_id, timeout)
                await connection.close(protocol.CLOSE_GOING_AWAY, "idle timeout")
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
                connection.transport.abort()
                return
            wait = remaining if blocked is None else min(remaining, blocked + timeout - now)
            await asyncio.sleep(max(wait, 0.05))

    # --- revoked keys ---------------------------------------------------------------------------

    def check_revocations(self) -> None:
        """Look for revoked keys now (SIGUSR1: kruxosctl changed the database)."""
        self._check_revocations.set()

    async def _watch_revocations(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_revocations.wait(), store.REVOCATION_CHECK_INTERVAL)
            self._check_revocations.clear()
            try:
                await self.close_revoked()
            except Exception:  # the database is failing: keep the connections, try again later
                log.exception("checking open connections for revoked keys failed")

    async def close_revoked(self) -> int:
        """Close (4401) every connection whose key was revoked after its handshake; how many."""
        live = list(self._live)
        if not live:
            return 0
        revoked = await self.db.read(functools.partial(store.revoked_among, key_ids=[c.key_id for c in live]))
        doomed = [c for c in live if c.key_id in revoked]
        for conn in doomed:
            log.warning(
                "closing session %s: API key %s was revoked", conn.caller.session_id, conn.caller.key_name
            )
        await asyncio.gather(
            *(c.connection.close(protocol.CLOSE_KEY_REVOKED, "API key revoked") for c in doomed)
        )
        return len(doomed)

    # --- shutdown -------------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Drain: refuse new work, tell clients, let requests finish, then close with 1001."""
        if self.draining or self._server is None:
            return
        self.draining = True
        if self._revocation_watch is not None:
            self._revocation_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._revocation_watch
        live = list(self._live)
        timeout = self.config.limits.drain_timeout
        log.info("draining: %d connection(s), up to %s s", len(live), timeout)
        for conn in live:
            conn.session.draining = True
        self._drop_stalled(live)
        announced = [asyncio.create_task(self._send(c.connection, protocol.shutdown_event())) for c in live]
        requests = [task for conn in live for task in conn.tasks]
        if announced or requests:
            # One deadline for both: an announcement to a client that stops reading now waits no longer.
            _, unfinished = await asyncio.wait([*announced, *requests], timeout=timeout)
            if cancelled := unfinished.difference(announced):
                log.warning("drain timeout: cancelling %d request(s) still in flight", len(cancelled))
        self._drop_stalled(live)
        self._server.close()  # closes open connections with 1001 and stops listening
        await self._server.wait_closed()

    @staticmethod
    def _drop_stalled(live: list[_Live]) -> None:
        """Abort the connections whose client is not reading: nothing more reaches it, not even the
        close frame it would be sent, which would wait behind the rest for good."""
        for conn in live:
            if conn.connection.write_blocked_since is not None:
                log.warning("session %s is not reading what it is sent; dropping it", conn.caller.session_id)
                conn.connection.transport.abort()

    async def wait_closed(self) -> None:
        assert self._server is not None
        await self._server.wait_closed()
