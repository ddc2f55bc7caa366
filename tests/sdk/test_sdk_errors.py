"""The error hierarchy, messages built from fields, and translation of dependency exceptions."""

from __future__ import annotations

import inspect
import re
from typing import Any

import kruxos.errors
import pytest
import websockets.exceptions
from kruxos._connection import _WEBSOCKETS_ERRORS, map_websockets_error
from kruxos._protocol import closed_error, handshake_error
from kruxos.errors import (
    ApprovalRequired,
    AuthenticationError,
    CapabilityError,
    ConfigurationError,
    ConnectionClosed,
    GatewayConnectionError,
    GatewayError,
    GatewayUnavailable,
    InvalidInput,
    KruxOSError,
    PolicyDenied,
    ProtocolError,
    RateLimited,
    RequestTimeout,
    TooManyRequests,
    UnknownCapability,
    VersionConflict,
    _from_error_object,
)
from kruxos.models import ErrorResponse, RecoveryAction

ERROR_CLASSES = [
    obj
    for _, obj in inspect.getmembers(kruxos.errors, inspect.isclass)
    if issubclass(obj, Exception) and obj.__module__ == "kruxos.errors"
]


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_derives_from_kruxos_error_and_has_a_docstring(cls: type[Exception]) -> None:
    assert issubclass(cls, KruxOSError)
    assert cls.__doc__
    assert "\n" not in cls.__doc__.strip()


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_is_drawn_in_the_module_docstring(cls: type[Exception]) -> None:
    assert kruxos.errors.__doc__ is not None
    assert re.search(rf"^\s*(│\s*|[├└]── )*{cls.__name__}\s", kruxos.errors.__doc__, re.MULTILINE)


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        pytest.param(AuthenticationError, GatewayConnectionError, id="authentication-is-a-connection-error"),
        pytest.param(RateLimited, GatewayConnectionError, id="rate-limited-is-a-connection-error"),
        pytest.param(GatewayUnavailable, GatewayConnectionError, id="unavailable-is-a-connection-error"),
        pytest.param(ConnectionClosed, GatewayConnectionError, id="closed-is-a-connection-error"),
        pytest.param(PolicyDenied, CapabilityError, id="policy-denied-is-a-capability-error"),
        pytest.param(ApprovalRequired, CapabilityError, id="approval-required-is-a-capability-error"),
        pytest.param(RequestTimeout, TimeoutError, id="request-timeout-is-a-builtin-timeout"),
    ],
)
def test_the_hierarchy(child: type[Exception], parent: type[Exception]) -> None:
    assert issubclass(child, parent)


def test_no_error_shadows_a_builtin_name() -> None:
    import builtins

    assert not [cls.__name__ for cls in ERROR_CLASSES if hasattr(builtins, cls.__name__)]


def obj(type_: str, **extra: Any) -> ErrorResponse:
    return ErrorResponse.model_validate({"type": type_, "message": "it went wrong"} | extra)


@pytest.mark.parametrize(
    ("type_", "expected"),
    [
        pytest.param("invalid_message", ProtocolError, id="invalid_message"),
        pytest.param("unknown_message_type", ProtocolError, id="unknown_message_type"),
        pytest.param("unknown_method", ProtocolError, id="unknown_method"),
        pytest.param("message_too_large", ProtocolError, id="message_too_large"),
        pytest.param("too_many_requests", TooManyRequests, id="too_many_requests"),
        pytest.param("unknown_capability", UnknownCapability, id="unknown_capability"),
        pytest.param("invalid_input", InvalidInput, id="invalid_input"),
        pytest.param("policy_denied", PolicyDenied, id="policy_denied"),
        pytest.param("approval_required", ApprovalRequired, id="approval_required"),
        pytest.param("version_conflict", VersionConflict, id="version_conflict"),
        pytest.param("internal_error", GatewayError, id="internal_error"),
        pytest.param("not_found", CapabilityError, id="ran-and-failed"),
        pytest.param("added_by_a_newer_gateway", CapabilityError, id="unknown-type"),
    ],
)
def test_error_objects_map_to_the_classes_in_protocol_md(type_: str, expected: type[Exception]) -> None:
    assert type(_from_error_object(obj(type_))) is expected


def test_a_capability_error_carries_the_structured_fields() -> None:
    error = _from_error_object(
        obj(
            "invalid_input",
            recovery=[{"action": "fix_input", "description": "pass a string"}],
            details={"input": "path"},
        )
    )
    assert isinstance(error, InvalidInput)
    assert error.type == "invalid_input"
    assert error.message == "it went wrong"
    assert error.recovery == [RecoveryAction(action="fix_input", description="pass a string")]
    assert error.input == "path"


@pytest.mark.parametrize(
    ("error", "text"),
    [
        pytest.param(
            _from_error_object(obj("policy_denied", rule="no-shell")),
            "policy_denied: it went wrong (rule: no-shell)",
            id="policy-denied",
        ),
        pytest.param(
            _from_error_object(obj("approval_required", approval_id="apr_1")),
            "approval_required: it went wrong (approval_id: apr_1)",
            id="approval-required",
        ),
        pytest.param(
            CapabilityError("not_found", "gone", capability="filesystem.read"),
            "not_found (filesystem.read): gone",
            id="capability-error",
        ),
        pytest.param(AuthenticationError("bad key", status=401), "bad key (HTTP 401)", id="authentication"),
        pytest.param(RateLimited("slow down", retry_after=2.5), "slow down (retry after 2.5 s)", id="rate"),
        pytest.param(
            ConnectionClosed("closed", code=1001, reason="idle timeout"),
            "closed (close code 1001: idle timeout)",
            id="closed",
        ),
    ],
)
def test_str_is_built_from_the_fields(error: Exception, text: str) -> None:
    assert str(error) == text


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(
            401,
            b'{"error": {"type": "authentication_failed", "message": "m"}}',
            AuthenticationError,
            id="401",
        ),
        pytest.param(
            400, b'{"error": {"type": "bad_request", "message": "m"}}', AuthenticationError, id="400"
        ),
        pytest.param(429, b"", RateLimited, id="429-without-body"),
        pytest.param(503, b"<html>", GatewayUnavailable, id="503-non-json-body"),
        pytest.param(426, b"{}", ProtocolError, id="426"),
        pytest.param(404, b"", ProtocolError, id="404-wrong-path"),
        pytest.param(500, b"", GatewayConnectionError, id="other-status"),
    ],
)
def test_a_refused_handshake_maps_by_status_whatever_the_body(
    status: int, body: bytes, expected: type[Exception]
) -> None:
    assert type(handshake_error(status, body, None)) is expected


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        pytest.param("7", 7.0, id="seconds"),
        pytest.param("soon", None, id="unparseable"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_retry_after_is_read_from_the_header(header: str | None, seconds: float | None) -> None:
    error = handshake_error(429, b"", header)
    assert isinstance(error, RateLimited)
    assert error.retry_after == seconds


@pytest.mark.parametrize("name", websockets.exceptions.__all__)
def test_every_websockets_exception_is_mapped_explicitly(name: str) -> None:
    assert name in _WEBSOCKETS_ERRORS, f"websockets.exceptions.{name} has no entry in _WEBSOCKETS_ERRORS"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(websockets.exceptions.InvalidURI("x://", "bad"), ConfigurationError, id="InvalidURI"),
        pytest.param(websockets.exceptions.InvalidMessage("eof"), GatewayUnavailable, id="InvalidMessage"),
        pytest.param(websockets.exceptions.NegotiationError("no"), ProtocolError, id="NegotiationError"),
        pytest.param(
            websockets.exceptions.PayloadTooBig(2_000_000, 1_048_576), ProtocolError, id="PayloadTooBig"
        ),
        pytest.param(websockets.exceptions.InvalidState("closed"), ConnectionClosed, id="InvalidState"),
        pytest.param(websockets.exceptions.ConnectionClosedOK(None, None), ConnectionClosed, id="ClosedOK"),
    ],
)
def test_websockets_exceptions_become_kruxos_errors(
    exc: websockets.exceptions.WebSocketException, expected: type[Exception]
) -> None:
    assert type(map_websockets_error(exc)) is expected


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        pytest.param(1000, "is closed", id="normal"),
        pytest.param(1001, "going away", id="going-away"),
        pytest.param(1009, "abnormally", id="message-too-big"),
        pytest.param(4401, "its API key was revoked", id="key-revoked"),
        pytest.param(None, "is closed", id="no-close-frame"),
    ],
)
def test_closed_errors_say_how_the_connection_closed(code: int | None, fragment: str) -> None:
    error = closed_error(code, "")
    assert fragment in str(error)
    assert error.code == code
