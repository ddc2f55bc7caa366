"""The kruxos.v1 client protocol without any I/O.

:class:`ClientProtocol` turns requests into text frames and received frames into outcomes; the I/O
driver (``_connection.py``) only moves text in and out and wakes up whoever waits for an answer. Tests
drive it by feeding frames, with no sockets.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from kruxos.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionClosed,
    GatewayConnectionError,
    GatewayUnavailable,
    KruxOSError,
    ProtocolError,
    RateLimited,
    _from_error_object,
)
from kruxos.models import ErrorResponse

__all__ = [
    "PROTOCOL",
    "Answered",
    "Call",
    "ClientProtocol",
    "EventReceived",
    "Failed",
    "Hello",
    "Ignored",
    "Inbound",
    "Limits",
    "closed_error",
    "handshake_error",
]

PROTOCOL = "kruxos.v1"
# The gateway closes a connection whose API key an operator revoked with this code (docs/protocol.md).
CLOSE_KEY_REVOKED = 4401

logger = logging.getLogger("kruxos")

T = TypeVar("T")


# --- Wire envelopes -------------------------------------------------------------------------------


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Limits(_Frame):
    """The gateway's limits for this connection, from ``hello``."""

    max_message_bytes: int = 1_048_576
    max_in_flight: int = 64
    idle_timeout: float = 300.0


class Hello(_Frame):
    """The first frame the gateway sends after the upgrade."""

    type: Literal["hello"]
    protocol: str
    gateway_version: str = ""
    session_id: str = ""
    key_name: str | None = None
    limits: Limits = Field(default_factory=Limits)


class _Response(_Frame):
    type: Literal["response"]
    id: str
    result: dict[str, Any] = Field(default_factory=dict)


class _Error(_Frame):
    type: Literal["error"]
    id: str | None = None
    error: ErrorResponse


class _Event(_Frame):
    type: Literal["event"]
    event: str
    data: Any = None


# json.dumps(ensure_ascii=False, allow_nan=False, separators=(",", ":")), its encoder built once.
_REQUEST_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

_ServerFrame = Annotated[Hello | _Response | _Error | _Event, Field(discriminator="type")]
_SERVER_FRAME: TypeAdapter[Hello | _Response | _Error | _Event] = TypeAdapter(_ServerFrame)


# --- What a received frame means ------------------------------------------------------------------


@dataclass(frozen=True)
class Answered:
    """The request ``id`` succeeded with ``result``."""

    id: str
    result: dict[str, Any]


@dataclass(frozen=True)
class Failed:
    """The request ``id`` failed with ``error``."""

    id: str
    error: KruxOSError


@dataclass(frozen=True)
class EventReceived:
    """The gateway pushed the event ``name`` with ``data``."""

    name: str
    data: Any


@dataclass(frozen=True)
class Ignored:
    """A frame that concerns no pending request (late answer, unattributable error); ``why`` says why."""

    why: str


Inbound = Answered | Failed | EventReceived | Ignored


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: the method and params to send, and how to read the result into a ``T``.

    The async and sync flavours both send the same ``Call`` objects, so request building and result
    parsing exist once.
    """

    method: str
    params: Mapping[str, Any]
    parse: Callable[[dict[str, Any]], T]
    capability: str | None = None
    """The capability concerned, named in the CapabilityError of a refusal (the frame does not say)."""


def parse_result(model: type[BaseModel], result: dict[str, Any], method: str) -> Any:
    """Validate a ``result`` object; a gateway answer the SDK cannot read is a ProtocolError."""
    try:
        return model.model_validate(result)
    except ValidationError as exc:
        raise ProtocolError(
            f"the gateway's answer to {method} has an unexpected shape: {_brief(exc)}"
        ) from None


def _brief(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "frame"
    return f"{where}: {first['msg']} ({exc.error_count()} problem(s))"


# --- The state machine ----------------------------------------------------------------------------


class ClientProtocol:
    """Request ids, the pending-request table, and frame encoding/decoding for one connection."""

    def __init__(self) -> None:
        self.hello: Hello | None = None
        self._next_id = 0
        self._pending: dict[str, str] = {}  # request id -> method

    @property
    def in_flight(self) -> int:
        """How many requests await an answer."""
        return len(self._pending)

    @property
    def limits(self) -> Limits:
        return self.hello.limits if self.hello is not None else Limits()

    def receive_hello(self, message: str | bytes) -> Hello:
        """Read the first frame; anything but a ``hello`` for ``kruxos.v1`` is a ProtocolError."""
        frame = self._decode(message)
        if isinstance(frame, _Error):
            raise _from_error_object(frame.error)
        if not isinstance(frame, Hello):
            raise ProtocolError(f"expected a hello frame first, got a {frame.type!r} frame")
        if frame.protocol != PROTOCOL:
            raise ProtocolError(f"the gateway speaks {frame.protocol!r}, this SDK speaks {PROTOCOL!r}")
        self.hello = frame
        return frame

    def send_request(self, method: str, params: Mapping[str, Any]) -> tuple[str, str]:
        """Allocate an id for a request and encode it; returns ``(id, text frame)``."""
        self._next_id += 1
        request_id = str(self._next_id)
        try:
            text = _REQUEST_JSON.encode(
                {"type": "request", "id": request_id, "method": method, "params": dict(params)}
            )
            size = len(text.encode("utf-8"))  # lone surrogates fail here, not later in the socket
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"the parameters of {method} cannot be sent as JSON: {exc}") from None
        if size > self.limits.max_message_bytes:
            raise ProtocolError(
                f"the {method} request is {size} bytes, over the gateway's limit of "
                f"{self.limits.max_message_bytes} bytes",
                type="message_too_large",
            )
        self._pending[request_id] = method
        return request_id, text

    def forget(self, request_id: str) -> None:
        """Stop waiting for ``request_id`` (timed out or cancelled); a late answer is then ignored."""
        self._pending.pop(request_id, None)

    def receive(self, message: str | bytes) -> Inbound:
        """Interpret one frame received after ``hello``."""
        try:
            frame = self._decode(message)
        except ProtocolError as exc:
            request_id = _salvage_id(message)
            if request_id is not None and request_id in self._pending:
                del self._pending[request_id]
                return Failed(request_id, exc)
            logger.warning("ignoring a frame the SDK cannot read: %s", exc)
            return Ignored(str(exc))
        if isinstance(frame, _Response):
            if self._pending.pop(frame.id, None) is None:
                return Ignored(f"answer to request {frame.id!r}, which is not pending")
            return Answered(frame.id, frame.result)
        if isinstance(frame, _Error):
            if frame.id is None or self._pending.pop(frame.id, None) is None:
                logger.warning("gateway reported an error: %s: %s", frame.error.type, frame.error.message)
                return Ignored(f"error not attributable to a pending request: {frame.error.type}")
            return Failed(frame.id, _from_error_object(frame.error))
        if isinstance(frame, _Event):
            return EventReceived(frame.event, frame.data)
        return Ignored("a second hello frame")

    def fail_all(self, make_error: Callable[[], KruxOSError]) -> list[Failed]:
        """The connection is gone: every pending request fails with an error from ``make_error``."""
        failed = [Failed(request_id, make_error()) for request_id in self._pending]
        self._pending.clear()
        return failed

    @staticmethod
    def _decode(message: str | bytes) -> Hello | _Response | _Error | _Event:
        if isinstance(message, bytes):
            raise ProtocolError("the gateway sent a binary frame; kruxos.v1 uses text frames only")
        try:
            return _SERVER_FRAME.validate_json(message)
        except ValidationError as exc:
            raise ProtocolError(f"the gateway sent a frame the SDK cannot read: {_brief(exc)}") from None


def _salvage_id(message: str | bytes) -> str | None:
    """The ``id`` of a malformed frame, if it has one, so its request fails instead of hanging."""
    try:
        raw = json.loads(message)
    except ValueError:
        return None
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


# --- Handshake refusals and closes ----------------------------------------------------------------


def handshake_error(
    status: int, body: bytes, retry_after: str | None
) -> GatewayConnectionError | ProtocolError:
    """The exception for a refused handshake (an HTTP response instead of an upgrade)."""
    message = f"the gateway refused the connection with HTTP {status}"
    try:
        error = ErrorResponse.model_validate(json.loads(body)["error"])
    except (ValueError, TypeError, KeyError, ValidationError):
        pass
    else:
        message = error.message
    if status in (400, 401):
        return AuthenticationError(message, status=status)
    if status == 429:
        return RateLimited(message, retry_after=_seconds(retry_after))
    if status == 503:
        return GatewayUnavailable(message)
    if status == 426:
        return ProtocolError(message, type="unsupported_protocol")
    if status == 404:
        return ProtocolError(f"{message}: no kruxos.v1 endpoint at this path")
    return GatewayConnectionError(message)


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def closed_error(code: int | None, reason: str) -> ConnectionClosed:
    """The exception for requests cut off when the connection closed with ``code`` and ``reason``."""
    if code == 1001:
        return ConnectionClosed("the gateway closed the connection (going away)", code=code, reason=reason)
    if code == CLOSE_KEY_REVOKED:
        return ConnectionClosed(
            "the gateway closed the connection: its API key was revoked", code=code, reason=reason
        )
    if code in (1000, None):
        return ConnectionClosed("the connection is closed", code=code, reason=reason)
    return ConnectionClosed("the connection was closed abnormally", code=code, reason=reason)
