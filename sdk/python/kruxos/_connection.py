"""The asyncio driver: moves frames between a ``websockets`` connection and :class:`ClientProtocol`.

A background reader task receives every frame, so many requests can be in flight on one connection and
server-pushed events are delivered while nobody awaits a request. Every ``websockets`` and OS exception
is translated into a :mod:`kruxos.errors` exception here, at the boundary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.frames import Frame, Opcode
from websockets.protocol import Event
from websockets.typing import Subprotocol
from websockets.version import version as websockets_version

from kruxos._protocol import (
    PROTOCOL,
    Answered,
    Call,
    ClientProtocol,
    EventReceived,
    Failed,
    Hello,
    closed_error,
    handshake_error,
)
from kruxos._version import __version__
from kruxos.errors import (
    CapabilityError,
    ConfigurationError,
    ConnectionClosed,
    GatewayUnavailable,
    KruxOSError,
    ProtocolError,
    RequestTimeout,
)

__all__ = ["MAX_RECEIVE_BYTES", "AsyncConnection", "map_websockets_error"]

logger = logging.getLogger("kruxos")

T = TypeVar("T")

MAX_RECEIVE_BYTES = 64 * 1024 * 1024
"""Largest frame accepted from the gateway (answers may carry file contents)."""

_LOGGED_FRAME_CHARS = 2000

# Every exception in websockets.exceptions.__all__, by name (names differ between websockets 15 and 17),
# and what it means to an SDK user. tests/sdk/test_exceptions.py fails if one is missing.
_WEBSOCKETS_ERRORS: dict[str, type[KruxOSError]] = {
    "WebSocketException": ProtocolError,
    "ConnectionClosed": ConnectionClosed,
    "ConnectionClosedOK": ConnectionClosed,
    "ConnectionClosedError": ConnectionClosed,
    "InvalidURI": ConfigurationError,
    "InvalidProxy": ConfigurationError,
    "InvalidHandshake": ProtocolError,
    "SecurityError": ProtocolError,
    "RequestLineTooLong": ProtocolError,
    "StatusLineTooLong": ProtocolError,
    "HeaderLineTooLong": ProtocolError,
    "TooManyHeaders": ProtocolError,
    "TooManyFragments": ProtocolError,
    "ProxyError": GatewayUnavailable,
    "InvalidProxyMessage": GatewayUnavailable,
    "InvalidProxyStatus": GatewayUnavailable,
    "InvalidMessage": GatewayUnavailable,  # the server closed or spoke garbage during the handshake
    "InvalidMethod": ProtocolError,
    "InvalidProtocol": ProtocolError,
    "InvalidStatus": ProtocolError,  # refined by handshake_error() from the HTTP status and body
    "InvalidHeader": ProtocolError,
    "InvalidHeaderFormat": ProtocolError,
    "InvalidHeaderValue": ProtocolError,
    "InvalidOrigin": ProtocolError,
    "InvalidUpgrade": ProtocolError,
    "NegotiationError": ProtocolError,  # e.g. the server did not accept the kruxos.v1 subprotocol
    "DuplicateParameter": ProtocolError,
    "InvalidParameterName": ProtocolError,
    "InvalidParameterValue": ProtocolError,
    "ProtocolError": ProtocolError,
    "PayloadTooBig": ProtocolError,
    "InvalidState": ConnectionClosed,  # an operation on a connection that is closing or closed
    "ConcurrencyError": ProtocolError,
}


def map_websockets_error(exc: WebSocketException, *, url: str = "the gateway") -> KruxOSError:
    """The SDK exception for a ``websockets`` exception."""
    if isinstance(exc, InvalidStatus):
        response = exc.response
        return handshake_error(
            response.status_code, bytes(response.body or b""), response.headers.get("Retry-After")
        )
    if isinstance(exc, websockets.ConnectionClosed):
        frame = exc.rcvd
        return closed_error(frame.code if frame else None, frame.reason if frame else "")
    cls = next(
        (_WEBSOCKETS_ERRORS[k.__name__] for k in type(exc).__mro__ if k.__name__ in _WEBSOCKETS_ERRORS),
        ProtocolError,
    )
    detail = str(exc) or type(exc).__name__
    if cls is ConnectionClosed:
        return ConnectionClosed("the connection is closed")
    if cls is GatewayUnavailable:
        return GatewayUnavailable(f"no WebSocket handshake with {url}: {detail}")
    return cls(f"WebSocket error talking to {url}: {detail}")


class _RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """websockets logs handshake headers at DEBUG; never let the API key reach a log."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if len(args) >= 2 and isinstance(args[0], str) and args[0].lower() == "authorization":
            args = (args[0], "Bearer <redacted>", *args[2:])
        super().log(level, msg, *args, **kwargs)


class _DispatchingConnection(ClientConnection):
    """A ``ClientConnection`` that hands each complete text frame to ``on_text`` as it arrives.

    websockets queues received messages for ``recv()``; reading them from there takes a task that
    wakes for each message and then wakes the caller waiting for its answer: two trips through the
    event loop per answer. Called from the connection's ``data_received``, ``on_text`` settles the
    caller's future directly, which halves the loop's work per round trip (bench/gateway_bench.py).

    Until ``on_text`` is set (the handshake and ``hello``), and from the first fragmented or binary
    message on, messages go the usual way, through ``recv()``: switching for good keeps frames in
    the order they arrived.
    """

    on_text: Callable[[str], None] | None = None

    def process_event(self, event: Event) -> None:
        on_text = self.on_text
        if on_text is not None and isinstance(event, Frame):
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


class AsyncConnection:
    """One open kruxos.v1 connection: send :class:`Call` objects, receive their parsed results."""

    def __init__(
        self,
        websocket: ClientConnection,
        protocol: ClientProtocol,
        *,
        url: str,
        request_timeout: float | None,
    ) -> None:
        self.url = url
        self.request_timeout = request_timeout
        self._websocket = websocket
        self._protocol = protocol
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[str, list[Callable[[Any], None]]] = {}
        self._slots = asyncio.Semaphore(max(1, protocol.limits.max_in_flight))
        self._closed: ConnectionClosed | None = None
        self._failure: asyncio.Task[None] | None = None
        # The reader ends when the connection closes, which fails whatever is still pending; it also
        # reads the (rare) messages that _DispatchingConnection leaves to recv().
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="kruxos-reader")
        if isinstance(websocket, _DispatchingConnection):
            websocket.on_text = self._receive

    @property
    def hello(self) -> Hello:
        assert self._protocol.hello is not None  # set by open()
        return self._protocol.hello

    @classmethod
    async def open(
        cls, url: str, api_key: str, *, open_timeout: float | None, request_timeout: float | None
    ) -> AsyncConnection:
        """Connect, authenticate and read ``hello``."""
        try:
            websocket = await connect(
                url,
                subprotocols=[Subprotocol(PROTOCOL)],
                additional_headers={"Authorization": f"Bearer {api_key}"},
                user_agent_header=f"kruxos-python/{__version__} websockets/{websockets_version}",
                create_connection=_DispatchingConnection,
                open_timeout=open_timeout,
                max_size=MAX_RECEIVE_BYTES,
                logger=_RedactingLogger(logging.getLogger("websockets.client")),
                # Not offering permessage-deflate: small JSON frames cost more CPU to compress than
                # they save on loopback or a LAN (the gateway does not accept it either).
                compression=None,
            )
        except WebSocketException as exc:
            raise map_websockets_error(exc, url=url) from exc
        except TimeoutError as exc:
            raise GatewayUnavailable(f"{url} did not complete the handshake within {open_timeout} s") from exc
        except OSError as exc:
            raise GatewayUnavailable(f"cannot reach the gateway at {url}: {exc.strerror or exc}") from exc
        protocol = ClientProtocol()
        try:
            async with asyncio.timeout(open_timeout):
                message = await websocket.recv()
            hello = protocol.receive_hello(message)
        except BaseException as exc:
            await websocket.close()
            if isinstance(exc, WebSocketException):
                raise map_websockets_error(exc, url=url) from exc
            if isinstance(exc, TimeoutError):
                raise ProtocolError(f"{url} sent no hello frame within {open_timeout} s") from exc
            raise
        logger.debug("< %s", _loggable(message))
        logger.info(
            "connected to %s as %r (session %s, gateway %s)",
            url,
            hello.key_name,
            hello.session_id,
            hello.gateway_version,
        )
        return cls(websocket, protocol, url=url, request_timeout=request_timeout)

    async def call(self, call: Call[T]) -> T:
        """Send ``call`` and return its parsed result; gateway errors are raised as SDK exceptions."""
        if self._closed is not None:
            raise closed_error(self._closed.code, self._closed.reason)
        try:
            if self.request_timeout is None:  # the default: no timer to arm and cancel per request
                async with self._slots:
                    result = await self._round_trip(call)
            else:
                async with asyncio.timeout(self.request_timeout), self._slots:
                    result = await self._round_trip(call)
        except CapabilityError as exc:
            if exc.capability is None:
                exc.capability = call.capability
            raise
        except TimeoutError as exc:
            if isinstance(exc, KruxOSError):
                raise
            raise RequestTimeout(
                f"no answer to {call.method} within {self.request_timeout} s",
                method=call.method,
                timeout=self.request_timeout or 0.0,
            ) from None
        return call.parse(result)

    async def _round_trip(self, call: Call[Any]) -> dict[str, Any]:
        request_id, text = self._protocol.send_request(call.method, call.params)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = waiter
        try:
            if logger.isEnabledFor(logging.DEBUG):  # don't build the loggable text for nothing
                logger.debug("> %s", _loggable(text))
            try:
                await self._websocket.send(text)
            except WebSocketException as exc:
                raise map_websockets_error(exc, url=self.url) from exc
            return await waiter
        finally:
            self._waiters.pop(request_id, None)
            self._protocol.forget(request_id)

    def add_listener(self, event: str, callback: Callable[[Any], None]) -> None:
        """Call ``callback(data)`` for every ``event`` the gateway pushes (used by later namespaces)."""
        self._listeners.setdefault(event, []).append(callback)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def wait_closed(self) -> None:
        """Return once the connection has closed (by either side); never raises."""
        await asyncio.shield(self._reader)

    async def close(self) -> None:
        """Close the connection (code 1000) and wait for the reader to finish."""
        await self._websocket.close()
        await self._reader

    async def _read(self) -> None:
        try:
            async for message in self._websocket:
                self._receive(message)
        except WebSocketException:
            pass  # the connection closed abnormally; close_code says how, below
        except Exception:
            logger.exception("the SDK's reader failed; closing the connection")
            await self._websocket.close(code=1011, reason="client error")
        finally:
            code, reason = self._websocket.close_code, self._websocket.close_reason or ""
            self._closed = closed_error(code, reason)
            for failed in self._protocol.fail_all(lambda: closed_error(code, reason)):
                self._settle(failed)
            logger.info(
                "connection to %s closed (code %s%s)", self.url, code, f": {reason}" if reason else ""
            )

    def _receive(self, message: str | bytes) -> None:
        """One frame, straight from the connection (see _DispatchingConnection) or as the reader got it
        from recv(); it must not raise."""
        try:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("< %s", _loggable(message))
            self._dispatch(self._protocol.receive(message))
        except Exception:
            logger.exception("the SDK failed to handle a frame; closing the connection")
            if self._failure is None:
                self._failure = asyncio.get_running_loop().create_task(
                    self._websocket.close(code=1011, reason="client error")
                )

    def _dispatch(self, inbound: Answered | Failed | EventReceived | Any) -> None:
        if isinstance(inbound, Answered | Failed):
            self._settle(inbound)
        elif isinstance(inbound, EventReceived):
            if inbound.name == "gateway.shutdown":
                logger.info("the gateway is shutting down: %s", inbound.data)
            listeners = self._listeners.get(inbound.name, [])
            if not listeners and inbound.name != "gateway.shutdown":
                logger.debug("ignoring event %r", inbound.name)
            for listener in listeners:
                try:
                    listener(inbound.data)
                except Exception:
                    logger.exception("listener for event %r failed", inbound.name)
        else:
            logger.debug("ignored frame: %s", inbound.why)

    def _settle(self, outcome: Answered | Failed) -> None:
        waiter = self._waiters.get(outcome.id)
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, Answered):
            waiter.set_result(outcome.result)
        else:
            waiter.set_exception(outcome.error)


def _loggable(message: str | bytes) -> str:
    text = message if isinstance(message, str) else f"<{len(message)} bytes binary>"
    if len(text) > _LOGGED_FRAME_CHARS:
        return f"{text[:_LOGGED_FRAME_CHARS]}… ({len(text)} chars)"
    return text
