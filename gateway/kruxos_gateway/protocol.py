"""The sans-I/O core of `kruxos.v1`: frames in, decisions out; no sockets, no event loop.

A ``Session`` holds the per-connection state (the requests in flight, whether the gateway is
draining). The WebSocket adapter feeds it each message it receives and acts on what it returns:

* ``Dispatch(request)``: run the request, then send its answer and call ``complete(request.id)``;
* ``Reply(frame)``: send this error frame now;
* ``Reply(frame, close_code=…)``: send it, then close the connection with that code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from . import errors
from .models import (
    CLIENT_FRAME,
    CLIENT_FRAME_TYPES,
    ErrorFrame,
    ErrorInfo,
    EventFrame,
    RequestFrame,
    ResponseFrame,
    ServerFrame,
)
from .state.methods import STATE_METHODS

METHODS = (
    frozenset(
        {"ping", "capabilities.list", "capabilities.describe", "capabilities.invoke", "approvals.check"}
    )
    | STATE_METHODS
)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_MESSAGE_TOO_BIG = 1009
# Application close code (4000-4999): the connection's API key was revoked (4401, after HTTP 401).
CLOSE_KEY_REVOKED = 4401


@dataclass(frozen=True)
class Dispatch:
    """Run this request; it now counts as in flight."""

    request: RequestFrame


@dataclass(frozen=True)
class Reply:
    """Send this frame now; if ``close_code`` is set, close the connection after it."""

    frame: ErrorFrame
    close_code: int | None = None
    close_reason: str = ""


Action = Dispatch | Reply


def encode(frame: ServerFrame) -> str:
    """The text of one gateway frame."""
    return frame.model_dump_json()


def error_frame(request_id: str | None, error: errors.GatewayError | ErrorInfo) -> ErrorFrame:
    info = error if isinstance(error, ErrorInfo) else error.to_info()
    return ErrorFrame(id=request_id, error=info)


def response_frame(request_id: str, result: dict[str, Any]) -> ResponseFrame:
    return ResponseFrame(id=request_id, result=result)


def shutdown_event() -> EventFrame:
    return EventFrame(event="gateway.shutdown", data={"reason": "draining"})


def parse_request(message: str | bytes, max_message_bytes: int) -> RequestFrame:
    """Validate one WebSocket message into a request frame, or raise a ``ProtocolError``.

    Raised errors carry ``request_id`` when the frame could be attributed to a request.
    """
    if isinstance(message, bytes):
        raise errors.InvalidMessage(
            "binary frames are not supported; send one JSON object per text frame",
            recovery=[("send_text", "encode the frame as JSON text and send it as a text frame")],
        )
    size = len(message.encode("utf-8", errors="surrogatepass"))
    if size > max_message_bytes:
        raise errors.MessageTooLarge(
            f"the frame is {size} bytes, over the limit of {max_message_bytes} bytes",
            recovery=[("reduce_size", "send smaller frames, e.g. split large file writes")],
            details={"size": size, "limit": max_message_bytes},
        )
    try:
        raw = json.loads(message, parse_constant=_reject_constant)
    except ValueError as exc:
        raise errors.InvalidMessage(
            f"the frame is not valid JSON: {exc}",
            recovery=[("fix_frame", "send one JSON object per text frame")],
        ) from None
    if not isinstance(raw, dict):
        raise errors.InvalidMessage(
            f"the frame must be a JSON object, got {_json_type(raw)}",
            recovery=[("fix_frame", 'send an object like {"type": "request", "id": "1", "method": "ping"}')],
        )
    request_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    frame_type = raw.get("type")
    if frame_type not in CLIENT_FRAME_TYPES:
        err: errors.ProtocolError = errors.UnknownMessageType(
            f"unknown frame type {frame_type!r}; a client sends only 'request' frames",
            recovery=[("fix_frame", "set type to 'request'")],
            details={"type": frame_type if isinstance(frame_type, str | int | float | bool) else None},
        )
        err.request_id = request_id
        raise err
    try:
        request = CLIENT_FRAME.validate_python(raw)
    except ValidationError as exc:
        err = errors.InvalidMessage(
            f"the request frame is malformed: {one_line(exc)}",
            recovery=[("fix_frame", "a request has a string id, a string method and an object params")],
        )
        err.request_id = request_id
        raise err from None
    if request.method not in METHODS:
        err = errors.UnknownMethod(
            f"unknown method {request.method!r}",
            recovery=[("use_known_method", "use one of: " + ", ".join(sorted(METHODS)))],
            details={"method": request.method},
        )
        err.request_id = request.id
        raise err
    return request


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def one_line(exc: ValidationError) -> str:
    """The first problem of a pydantic error as one line: ``loc: message``."""
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    return f"{loc}: {first['msg']}" if loc else first["msg"]


P = TypeVar("P", bound=BaseModel)


def parse_params(model: type[P], params: dict[str, Any], method: str) -> P:
    """Validate a request's ``params`` for ``method``; a mismatch is ``invalid_message``."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise errors.InvalidMessage(
            f"invalid params for {method}: {one_line(exc)}",
            recovery=[("fix_params", "see docs/protocol.md for the params of each method")],
        ) from None


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


class Session:
    """Per-connection protocol state: validates frames and accounts for requests in flight."""

    def __init__(self, *, max_message_bytes: int, max_in_flight: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_in_flight = max_in_flight
        self.in_flight: set[str] = set()
        self.draining = False

    def receive(self, message: str | bytes) -> Action:
        """Decide what to do with one message from the client."""
        try:
            request = parse_request(message, self.max_message_bytes)
        except errors.MessageTooLarge as exc:
            return Reply(error_frame(None, exc), CLOSE_MESSAGE_TOO_BIG, "message too large")
        except errors.ProtocolError as exc:
            close = CLOSE_PROTOCOL_ERROR if isinstance(message, bytes) else None
            return Reply(error_frame(getattr(exc, "request_id", None), exc), close, "binary frame")
        if self.draining:
            return Reply(
                error_frame(
                    request.id,
                    errors.Unavailable(
                        "the gateway is shutting down and starts no new requests",
                        recovery=[("reconnect_later", "reconnect once the gateway is back and retry")],
                    ),
                )
            )
        if request.id in self.in_flight:
            return Reply(
                error_frame(
                    request.id,
                    errors.InvalidMessage(
                        f"a request with id {request.id!r} is already in flight on this connection",
                        recovery=[("use_unique_id", "give every request in flight its own id")],
                        details={"id": request.id},
                    ),
                )
            )
        if len(self.in_flight) >= self.max_in_flight:
            return Reply(
                error_frame(
                    request.id,
                    errors.TooManyRequests(
                        f"{len(self.in_flight)} requests are already in flight (limit {self.max_in_flight})",
                        recovery=[("retry_later", "wait for an answer to arrive, then retry this request")],
                        details={"limit": self.max_in_flight},
                    ),
                )
            )
        self.in_flight.add(request.id)
        return Dispatch(request)

    def complete(self, request_id: str) -> None:
        """The answer to ``request_id`` has been sent (or the request was abandoned)."""
        self.in_flight.discard(request_id)
