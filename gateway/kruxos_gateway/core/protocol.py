"""The sans-I/O core of `kruxos.v1`: frames in, decisions out; no sockets, no event loop.

A ``Session`` holds the per-connection state (the requests in flight, whether the gateway is
draining). The WebSocket adapter feeds it each message it receives and acts on what it returns:

* ``Dispatch(request)``: run the request, then send its answer and call ``complete(request.id)``;
* ``Reply(frame)``: send this error frame now;
* ``Reply(frame, close_code=…)``: send it, then close the connection with that code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from .. import errors
from .models import (
    CLIENT_FRAME,
    CLIENT_FRAME_TYPES,
    ErrorFrame,
    ErrorInfo,
    EventFrame,
    RequestFrame,
    ServerFrame,
)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_MESSAGE_TOO_BIG = 1009
# Application close code (4000-4999): the connection's API key was revoked (4401, after HTTP 401).
CLOSE_KEY_REVOKED = 4401

# The deepest nesting of objects and arrays in a frame: the frame itself is depth 1, its params 2, a
# capability's inputs 3. JSON much deeper makes the parser recurse until it fails, and the answer's
# serialiser refuses values nested past about 250: a state value that deep could be stored but never
# read back. No input an agent needs comes close to this.
MAX_JSON_DEPTH = 64
# Integers are kept to SQLite's (and most languages') 64-bit range: a bigger version or limit fails
# deep inside a capability instead of being refused as the input it is.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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
    try:
        return frame.model_dump_json()
    except PydanticSerializationError:
        # A string of the frame holds a lone surrogate (an agent sent "\\ud800", valid JSON, which the
        # frame echoes): it has no UTF-8 form, so it is sent as the same JSON escape, which the client
        # decodes back to what it sent.
        text = json.dumps(frame.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def error_frame(request_id: str | None, error: errors.GatewayError | ErrorInfo) -> ErrorFrame:
    info = error if isinstance(error, ErrorInfo) else error.to_info()
    return ErrorFrame(id=request_id, error=info)


def shutdown_event() -> EventFrame:
    return EventFrame(event="gateway.shutdown", data={"reason": "draining"})


def parse_request(message: str | bytes, max_message_bytes: int, methods: Collection[str]) -> RequestFrame:
    """Validate one WebSocket message into a request frame, or raise a ``ProtocolError``.

    ``methods`` are the names the gateway answers (its dispatch table, ``core.methods``): the core
    itself knows no method, so a feature adds its own without editing it.

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
    except RecursionError:  # nested far past MAX_JSON_DEPTH: the parser gave up before the end
        request_id, path = _salvage_too_deep(message)
        if not path:
            raise errors.InvalidMessage(
                f"the frame is nested more than {MAX_JSON_DEPTH} deep and is not a JSON object",
                recovery=[("fix_frame", "send one JSON object per text frame")],
            ) from None
        err: errors.ProtocolError = _too_deep(path)
        err.request_id = request_id
        raise err from None
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
        err = errors.UnknownMessageType(
            f"unknown frame type {frame_type!r}; a client sends only 'request' frames",
            recovery=[("fix_frame", "set type to 'request'")],
            details={"type": frame_type if isinstance(frame_type, str | int | float | bool) else None},
        )
        err.request_id = request_id
        raise err
    try:
        check_bounds(raw)
    except errors.InputOutOfBounds as exc:
        exc.request_id = request_id
        raise
    try:
        request = CLIENT_FRAME.validate_python(raw)
    except ValidationError as exc:
        err = errors.InvalidMessage(
            f"the request frame is malformed: {one_line(exc)}",
            recovery=[("fix_frame", "a request has a string id, a string method and an object params")],
        )
        err.request_id = request_id
        raise err from None
    if request.method not in methods:
        err = unknown_method(request.method, methods)
        err.request_id = request.id
        raise err
    return request


def unknown_method(name: str, known: Iterable[str]) -> errors.UnknownMethod:
    """The refusal of a method the gateway does not answer, listing the ones it does."""
    return errors.UnknownMethod(
        f"unknown method {name!r}",
        recovery=[("use_known_method", "use one of: " + ", ".join(sorted(known)))],
        details={"method": name},
    )


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


# --- depth and numbers --------------------------------------------------------------------------

# Where a value sits in a frame: the keys and indices down to it from the frame.
ValuePath = tuple[str | int, ...]


def check_bounds(frame: dict[str, Any]) -> None:
    """Raise ``errors.InputOutOfBounds`` for the first value of the frame's params nested deeper than
    ``MAX_JSON_DEPTH`` or number out of range: an integer outside 64 bits, or a float that
    overflowed to infinity (``1e400`` parses, as infinity).

    The rest of the frame is pydantic's to check (an id must be a string, …). This runs on every
    request, so it is a plain loop over what ``json.loads`` made (exact types, no paths): well under
    a microsecond for a usual request, about the time of the parse itself for 100,000 values. The
    path of a bad value is looked for only once there is one. Iterative: checking depth costs none.
    """
    params = frame.get("params")
    if type(params) is not dict and type(params) is not list:
        return
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(params, 2)]  # the frame is depth 1
    while pending:
        container, depth = pending.pop()
        for value in container.values() if isinstance(container, dict) else container:
            kind = type(value)
            if kind is dict or kind is list:
                if depth >= MAX_JSON_DEPTH:
                    raise _too_deep(_path_to(params, value))
                pending.append((value, depth + 1))
            elif kind is int:
                if not INT64_MIN <= value <= INT64_MAX:
                    raise _out_of_range(
                        _path_to(params, value),
                        "an integer outside the 64-bit range",
                        f"an integer from {INT64_MIN} to {INT64_MAX}",
                    )
            elif kind is float and math.isinf(value):
                raise _out_of_range(
                    _path_to(params, value), "a number too large for a 64-bit float", "a finite number"
                )


def _path_to(params: dict[str, Any] | list[Any], target: object) -> ValuePath:
    """Where ``target`` (that very object: json.loads makes one per occurrence of such values) is."""
    pending: list[tuple[dict[str, Any] | list[Any], ValuePath]] = [(params, ("params",))]
    while pending:
        container, path = pending.pop()
        for name, value in container.items() if isinstance(container, dict) else enumerate(container):
            if value is target:
                return (*path, name)
            if isinstance(value, dict | list):
                pending.append((value, (*path, name)))
    return ("params",)


def _field(path: ValuePath) -> list[str]:
    """The parts that name the value at ``path`` in an error: relative to ``params`` and to a
    capability's ``inputs``, as InvalidInput names inputs (``expected_version``, ``items.3.n``)."""
    parts = [str(part) for part in path]
    for wrapper in ("params", "inputs"):
        if parts[:1] == [wrapper] and len(parts) > 1:
            parts = parts[1:]
    return parts


def _out_of_range(path: ValuePath, what: str, wanted: str) -> errors.InputOutOfBounds:
    field = ".".join(_field(path))
    return errors.InputOutOfBounds(field, f"input {field!r} is {what}", f"pass {field} as {wanted}")


def _too_deep(path: ValuePath) -> errors.InputOutOfBounds:
    # Named by the input that holds the deep value, not by a path 64 parts long.
    field = _field(path)[0]
    return errors.InputOutOfBounds(
        field,
        f"input {field!r} nests objects and arrays more than {MAX_JSON_DEPTH} deep (counting the frame)",
        f"flatten {field}: at most {MAX_JSON_DEPTH - 3} levels of objects and arrays inside an input",
    )


_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _salvage_too_deep(text: str) -> tuple[str | None, ValuePath]:
    """For a frame nested too deep for ``json.loads``: the request's id and the keys down to the
    deep value (``params``, ``inputs``, the input's name), as far as they can be read cheaply.

    Members are decoded one at a time, in C like ``json.loads``, and only the deep one is descended
    into, at most three objects down. Reading what follows the deep value would mean scanning it in
    Python, so an id that comes after it stays unknown (the error then has id null); clients send
    the id first.
    """
    request_id: str | None = None
    path: list[str] = []
    start = _skip_space(text, 0)
    for _ in range(3):
        read, deep = _members_before_deep(text, start)
        if not path and isinstance(read.get("id"), str):
            request_id = read["id"]
        if deep is None:
            break
        key, start = deep
        path.append(key)
    return request_id, tuple(path)


def _members_before_deep(text: str, pos: int) -> tuple[dict[str, Any], tuple[str, int] | None]:
    """The members of the object at ``text[pos]`` up to the first one too deep to decode, and that
    one's key and where its value starts (``None`` if none is too deep, or this is no object)."""
    read: dict[str, Any] = {}
    if text[pos : pos + 1] != "{":
        return read, None
    pos += 1
    while True:
        pos = _skip_space(text, pos)
        if text[pos : pos + 1] != '"':  # a key is a string: decoding it cannot recurse
            return read, None
        try:
            key, pos = _DECODER.raw_decode(text, pos)
        except ValueError:
            return read, None
        pos = _skip_space(text, pos)
        if text[pos : pos + 1] != ":":
            return read, None
        pos = _skip_space(text, pos + 1)
        try:
            read[key], pos = _DECODER.raw_decode(text, pos)
        except RecursionError:
            return read, (key, pos)
        except ValueError:
            return read, None
        pos = _skip_space(text, pos)
        if text[pos : pos + 1] != ",":
            return read, None
        pos += 1


def _skip_space(text: str, pos: int) -> int:
    match = _SPACE.match(text, pos)
    return match.end() if match else pos


def one_line(exc: ValidationError) -> str:
    """The first problem of a pydantic error as one line: ``loc: message``."""
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    return f"{loc}: {first['msg']}" if loc else first["msg"]


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

    def __init__(self, *, max_message_bytes: int, max_in_flight: int, methods: Collection[str]) -> None:
        self.max_message_bytes = max_message_bytes
        self.methods = methods
        self.max_in_flight = max_in_flight
        self.in_flight: set[str] = set()
        self.draining = False

    def receive(self, message: str | bytes) -> Action:
        """Decide what to do with one message from the client."""
        try:
            request = parse_request(message, self.max_message_bytes, self.methods)
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
