"""The HTTP server on port 7700 (aiohttp): its connections, its route table and its error bodies.

Features plug in as aiohttp routes (``HttpServer.add_routes``): ``/health`` and ``/v1/supervision``
today, ``/mcp`` and ``/console`` next. This module knows HTTP, not what any route means. What it adds
to aiohttp, connection by connection (``Connection``):

* admission before any byte is parsed: a connection past ``admission.Admission``'s limits is aborted
  the moment it is accepted;
* a deadline for the first request's headers (``limits.handshake_timeout``; aiohttp has none), the
  same time for an idle keep-alive connection to send its next one, and ``MAX_REQUEST_HEAD`` bytes
  for a request line and headers (aiohttp 3.11 bounds each line, not how many there are);
* for a WebSocket, ``frames.ClientFrames`` ahead of aiohttp's reader (a message past the hard limit
  is refused from its frame header; text messages go straight to the session), and write
  backpressure: while the client does not read what it is sent, nothing more is read from it, and
  ``Connection.writable`` holds senders back;
* every error answer as JSON ``{"error": {type, message, recovery}}``, aiohttp's own ones included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler

from .._version import __version__
from ..config import LimitsConfig
from ..core.models import ErrorInfo, RecoveryAction
from .admission import Admission
from .frames import ClientFrames

log = logging.getLogger(__name__)

SERVER_HEADER = f"kruxos-gateway/{__version__}"
#: Seconds after an answer during which the rest of a request body nobody read is read and dropped,
#: so that the client sees the answer before the connection closes (aiohttp's lingering close).
LINGERING_TIME = 2.0
#: Header fields per request (aiohttp 3.14 refuses more; 3.11 takes the number and ignores it).
MAX_HEADERS = 128
#: Bytes a request line and its headers may take, whatever the version checks: 431 past it.
MAX_REQUEST_HEAD = 64 * 1024


def json_response(
    status: HTTPStatus | int, body: dict[str, Any], headers: Iterable[tuple[str, str]] = ()
) -> web.Response:
    response = web.Response(
        status=int(status), body=json.dumps(body).encode(), content_type="application/json"
    )
    for name, value in headers:
        response.headers[name] = value
    return response


def error_response(
    status: HTTPStatus | int,
    error_type: str,
    message: str,
    action: str,
    description: str,
    *,
    details: dict[str, Any] | None = None,
    headers: Iterable[tuple[str, str]] = (),
    close: bool = True,
) -> web.Response:
    """An HTTP error with the body every gateway error has; the connection closes after it unless
    ``close`` is false."""
    info = ErrorInfo(
        type=error_type,
        message=message,
        recovery=[RecoveryAction(action=action, description=description)],
        details=details or {},
    )
    response = json_response(status, {"error": info.model_dump(mode="json")}, headers)
    if close:
        response.force_close()
    return response


class Connection(web.RequestHandler):
    """One TCP connection: admitted or refused when accepted, given ``header_timeout`` for its first
    request, and, once upgraded to a WebSocket, watched frame by frame and held to backpressure."""

    def __init__(
        self, manager: web.Server, *, admission: Admission, header_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._admission = admission
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        # The address this connection counts for in the gate, until it proves a key or ends.
        self._unauthenticated_from: str | None = None
        self._refused = False
        #: Gives back a key's connection slot (quotas.connections) once, when the connection ends.
        self.release_key_slot: Callable[[], None] | None = None
        #: Since when the transport holds more than its high-water mark (None: it does not).
        self.write_blocked_since: float | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        #: Set before a WebSocket upgrade: what follows the client's frames (and sees their sizes).
        self.frames: ClientFrames | None = None
        self._on_too_big: Callable[[], object] | None = None
        self._on_text: Callable[[str], None] | None = None
        # The request head under way: its bytes so far, the last 3 (its end may straddle two reads),
        # and whether it ended (the blank line came) while its request has not reached a handler.
        self._head_bytes = 0
        self._head_tail = b""
        self._head_done = False
        self._in_request = False
        self._last_body: StreamReader | None = None

    # --- admission and deadlines ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = self._admission.admit(self, transport)
        if address is None:
            # Closed before aiohttp sees it: no task, no timer, nothing logged per connection, and
            # its descriptor is free again at once.
            self._refused = True
            transport.abort()  # type: ignore[attr-defined]  # a TCP transport has it
            return
        self._unauthenticated_from = address
        super().connection_made(transport)
        self._header_timer = asyncio.get_running_loop().call_later(self._header_timeout, self._too_slow)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._stop_header_timer()
        self._leave_gate()
        release, self.release_key_slot = self.release_key_slot, None
        if release is not None:
            release()
        self._writable.set()  # a sender waiting for the client to read gets its ConnectionError
        super().connection_lost(exc)

    def request_started(self) -> None:
        """A whole request head arrived in time: from now on aiohttp's keep-alive timeout applies."""
        self._stop_header_timer()
        self._in_request = True

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def request_finished(self, request: web.BaseRequest) -> None:
        self._in_request = False
        self._head_bytes, self._head_tail, self._head_done = 0, b"", False
        self._last_body = request.content

    def _head_over_budget(self, data: bytes) -> bool:
        """Count what of ``data`` belongs to a request head; whether that head is past
        MAX_REQUEST_HEAD."""
        if self._in_request or self._head_done or self.frames is not None:
            return False
        if self._last_body is not None:
            if not self._last_body.is_eof():  # aiohttp is reading (and dropping) the last body
                return False
            self._last_body = None
        seen = self._head_tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._head_bytes += len(data)
            self._head_tail = seen[-3:]
        else:
            self._head_bytes += end + 4 - len(self._head_tail)
            self._head_done = True
        return self._head_bytes > MAX_REQUEST_HEAD

    def _head_too_large(self) -> None:
        log.debug("closing a connection whose request head is over %d bytes", MAX_REQUEST_HEAD)
        info = ErrorInfo(
            type="bad_request",
            message=f"the request line and headers are over {MAX_REQUEST_HEAD} bytes",
            recovery=[RecoveryAction(action="fix_request", description="send fewer or shorter headers")],
        )
        body = json.dumps({"error": info.model_dump(mode="json")}).encode()
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\n"
                b"Server: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (SERVER_HEADER.encode(), len(body), body)
            )
        self.force_close()

    def _too_slow(self) -> None:
        self._header_timer = None
        log.debug("closing a connection that sent no request within %s s", self._header_timeout)
        self.force_close()

    def authenticated(self) -> None:
        """Its request proved a key: it no longer counts against the unauthenticated limits."""
        self._leave_gate()

    def _leave_gate(self) -> None:
        if self._unauthenticated_from is not None:
            self._admission.leave(self, self._unauthenticated_from)
            self._unauthenticated_from = None

    def evict(self) -> None:
        """Close a connection that waited too long for its handshake, to make room for another."""
        self._leave_gate()
        if self.transport is not None:
            self.transport.abort()

    # --- WebSocket: frame sizes and backpressure -------------------------------------------------

    def watch_frames(self, frames: ClientFrames, on_too_big: Callable[[], object], write_limit: int) -> None:
        """Before a WebSocket upgrade: follow its frames with ``frames``, call ``on_too_big`` (once)
        for a message past ``frames.max_message_bytes``, and hold the transport to ``write_limit``
        bytes: past it, sending waits and reading stops until a quarter is left."""
        self.frames = frames
        self._on_too_big = on_too_big
        if self.transport is not None:
            self.transport.set_write_buffer_limits(high=write_limit)

    def take_texts(self, on_text: Callable[[str], None]) -> None:
        """From now on, hand each text message sent in one frame to ``on_text`` as it arrives,
        instead of queueing it for ``receive()``; it must not raise."""
        assert self.frames is not None
        self._on_text = on_text
        self.frames.taking = True

    def set_parser(self, parser: Any, *args: Any, **kwargs: Any) -> None:
        # aiohttp installs its WebSocket reader here, and feeds it what arrived after the upgrade.
        if self.frames is not None:
            parser = _SplitParser(parser, self)
        super().set_parser(parser, *args, **kwargs)

    def _frames_received(self, parser: Any, data: bytes) -> Any:
        assert self.frames is not None
        split = self.frames.feed(data)
        result = parser.feed_data(split.passthrough) if split.passthrough else _MORE
        if split.texts:
            on_text = self._on_text
            assert on_text is not None
            for text in split.texts:
                on_text(text)
        if split.too_big:
            if self.transport is not None:
                self.transport.pause_reading()
            on_too_big, self._on_too_big = self._on_too_big, None
            if on_too_big is not None:
                on_too_big()
        return result

    async def writable(self) -> None:
        """Return once the transport holds less than its high-water mark (at once if it does)."""
        await self._writable.wait()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_blocked_since = time.monotonic()
        self._writable.clear()
        # The client does not read what it is sent: read nothing more from it either until it does,
        # or every request it sends meanwhile would queue one more answer (if only an error).
        if self.frames is not None and self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_blocked_since = None
        self._writable.set()
        # aiohttp's own pause (its message queue full) never lasts: the session reads that queue
        # without ever waiting on anything else.
        if self.frames is not None and self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._head_over_budget(data):
            self._head_too_large()
            return
        super().data_received(data)
        # aiohttp resumes reading once its queue drains, unaware of the pause for writing.
        if self.write_blocked_since is not None and self.frames is not None and self.transport is not None:
            self.transport.pause_reading()

    # --- errors aiohttp answers itself (a malformed request, a header too long) ------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:  # a client's mistake (or a scan): not worth a line per request
            log.debug("refused a malformed request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was already under way; the connection is dropped")
        if status >= 500:
            response = error_response(
                status, "internal_error", "internal error in the gateway; see its log", "retry", "retry later"
            )
        else:
            # aiohttp's own words, first line only: some of them quote the request over several.
            reason = (str(message or exc or "").strip().splitlines() or ["unparsable"])[0][:200]
            response = error_response(
                status,
                "bad_request",
                f"malformed HTTP request: {reason}",
                "fix_request",
                "send a well-formed HTTP/1.1 request",
            )
        response.headers["Server"] = SERVER_HEADER
        return response


_MORE = (False, b"")  # what aiohttp's reader returns for bytes that do not end the stream


class _SplitParser:
    """aiohttp's WebSocket reader, behind the connection's ``ClientFrames``."""

    def __init__(self, parser: Any, connection: Connection) -> None:
        self._parser = parser
        self._connection = connection

    def feed_data(self, data: bytes) -> Any:
        return self._connection._frames_received(self._parser, data)

    def feed_eof(self) -> None:
        self._parser.feed_eof()


@web.middleware
async def _gateway_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the connection where a request starts and ends (header deadline and budget), and
    answers aiohttp's HTTP errors (no such path, method not allowed, body too large) with the
    gateway's JSON error body."""
    connection = request.protocol
    if isinstance(connection, Connection):
        connection.request_started()
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    finally:
        if isinstance(connection, Connection):
            connection.request_finished(request)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    path = request.path
    if exc.status == HTTPStatus.NOT_FOUND:
        return error_response(
            exc.status,
            "not_found",
            f"nothing is served at {path}",
            "use_supervision_path",
            "connect to /v1/supervision (or GET /health)",
            close=False,
        )
    if exc.status == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = exc.headers.get("Allow", "")
        return error_response(
            exc.status,
            "method_not_allowed",
            f"{request.method} is not allowed on {path} (allowed: {allowed or 'none'})",
            "use_allowed_method",
            f"send one of: {allowed}",
            headers=[("Allow", allowed)],
            close=False,
        )
    if exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        return error_response(
            exc.status,
            "request_too_large",
            f"the request body is larger than {request.client_max_size} bytes",
            "shrink_request",
            f"send at most {request.client_max_size} bytes",
        )
    return error_response(exc.status, "bad_request", exc.text or exc.reason, "fix_request", "fix the request")


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


class HttpServer:
    """An aiohttp application on one listening socket, each connection admitted by ``admission``."""

    def __init__(self, limits: LimitsConfig, admission: Admission, shutdown_timeout: float) -> None:
        self.admission = admission
        self._header_timeout = limits.handshake_timeout
        self.app = web.Application(
            client_max_size=limits.max_message_bytes, middlewares=[_gateway_middleware]
        )
        self.app.on_response_prepare.append(_server_header)
        # Handed to every Connection: keep-alive and slow headers get what a handshake gets.
        self._handler_args: dict[str, Any] = {
            "keepalive_timeout": limits.handshake_timeout,
            "lingering_time": LINGERING_TIME,
            "max_headers": MAX_HEADERS,
            "access_log": None,
        }
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        """Serve ``routes`` too (before ``start``): e.g. ``[web.post("/mcp", handler)]``."""
        self.app.add_routes(routes)

    async def start(self, host: str, port: int) -> None:
        runner = web.AppRunner(self.app, shutdown_timeout=self._shutdown_timeout, **self._handler_args)
        await runner.setup()
        server = runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def connection() -> Connection:
            return Connection(
                server,
                loop=loop,
                admission=self.admission,
                header_timeout=self._header_timeout,
                **self._handler_args,
            )

        try:
            self._listener = await loop.create_server(connection, host, port)
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    @property
    def address(self) -> tuple[str, int]:
        """The host and port actually listened on (the port is real even if 0 was configured)."""
        assert self._listener is not None
        host, port = self._listener.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        """Stop listening, then close every connection (each request gets ``shutdown_timeout``)."""
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._listener is not None:
            await self._listener.wait_closed()
