"""The sans-I/O protocol core: frames in, decisions out, no sockets."""

from __future__ import annotations

import json

import pytest
from kruxos_gateway.core import protocol
from kruxos_gateway.core.models import HelloFrame, Limits

# The names a gateway's dispatch table would hold (core/methods.py); the core itself knows none.
METHODS = frozenset({"ping", "capabilities.list", "capabilities.invoke"})


def session(max_message_bytes: int = 1024, max_in_flight: int = 2) -> protocol.Session:
    return protocol.Session(max_message_bytes=max_message_bytes, max_in_flight=max_in_flight, methods=METHODS)


def request(request_id: str = "1", method: str = "ping", **extra: object) -> str:
    return json.dumps({"type": "request", "id": request_id, "method": method, **extra}, ensure_ascii=False)


def test_a_valid_request_is_dispatched_and_counts_as_in_flight() -> None:
    s = session()
    action = s.receive(request("7", "capabilities.invoke", params={"name": "x", "inputs": {}}))
    assert isinstance(action, protocol.Dispatch)
    assert action.request.id == "7"
    assert action.request.params == {"name": "x", "inputs": {}}
    assert s.in_flight == {"7"}


def test_params_may_be_omitted() -> None:
    action = session().receive(request())
    assert isinstance(action, protocol.Dispatch)
    assert action.request.params == {}


def test_completing_a_request_frees_its_slot() -> None:
    s = session()
    s.receive(request("1"))
    s.complete("1")
    assert s.in_flight == set()


@pytest.mark.parametrize(
    ("message", "error_type", "answer_id"),
    [
        pytest.param("{not json", "invalid_message", None, id="not-json"),
        pytest.param("[1, 2]", "invalid_message", None, id="array-not-object"),
        pytest.param(
            '{"type": "request", "id": "n", "method": "ping", "params": {"x": NaN}}',
            "invalid_message",
            None,
            id="nan-is-not-json",
        ),
        pytest.param('"hello"', "invalid_message", None, id="string-not-object"),
        pytest.param('{"id": "3", "method": "ping"}', "unknown_message_type", "3", id="no-type"),
        pytest.param('{"type": "response", "id": "4"}', "unknown_message_type", "4", id="server-frame-type"),
        pytest.param(
            '{"type": "request", "id": 5, "method": "ping"}', "invalid_message", None, id="integer-id"
        ),
        pytest.param('{"type": "request", "id": "6"}', "invalid_message", "6", id="no-method"),
        pytest.param(
            '{"type": "request", "id": "7", "method": "ping", "params": []}',
            "invalid_message",
            "7",
            id="params-not-object",
        ),
        pytest.param(
            '{"type": "request", "id": "8", "method": "ping", "extra": 1}',
            "invalid_message",
            "8",
            id="unknown-field",
        ),
        pytest.param(request("9", "files.read"), "unknown_method", "9", id="unknown-method"),
    ],
)
def test_a_bad_frame_gets_an_error_frame_and_keeps_the_connection(
    message: str, error_type: str, answer_id: str | None
) -> None:
    action = session().receive(message)
    assert isinstance(action, protocol.Reply)
    assert action.frame.error.type == error_type
    assert action.frame.id == answer_id
    assert action.frame.error.recovery, "every protocol error says what to do"
    assert action.close_code is None


def test_a_binary_frame_is_answered_then_closed_with_1002() -> None:
    action = session().receive(b'{"type": "request"}')
    assert isinstance(action, protocol.Reply)
    assert action.frame.error.type == "invalid_message"
    assert action.close_code == protocol.CLOSE_PROTOCOL_ERROR


def test_an_oversized_frame_is_answered_then_closed_with_1009() -> None:
    action = session(max_message_bytes=100).receive(request(params={"pad": "x" * 200}))
    assert isinstance(action, protocol.Reply)
    assert action.frame.error.type == "message_too_large"
    assert action.frame.error.details["limit"] == 100
    assert action.close_code == protocol.CLOSE_MESSAGE_TOO_BIG


def test_the_size_limit_counts_utf8_bytes_not_characters() -> None:
    message = request(params={"text": "é" * 60})  # 60 characters, 120 bytes
    limit = len(message) + 30
    assert len(message.encode()) > limit
    action = session(max_message_bytes=limit).receive(message)
    assert isinstance(action, protocol.Reply)
    assert action.frame.error.type == "message_too_large"


def test_a_request_past_max_in_flight_gets_too_many_requests_and_the_session_goes_on() -> None:
    s = session(max_in_flight=2)
    s.receive(request("1"))
    s.receive(request("2"))
    refused = s.receive(request("3"))
    assert isinstance(refused, protocol.Reply)
    assert refused.frame.id == "3"
    assert refused.frame.error.type == "too_many_requests"
    assert refused.close_code is None
    s.complete("1")
    assert isinstance(s.receive(request("3")), protocol.Dispatch)


def test_an_id_already_in_flight_is_refused() -> None:
    s = session()
    s.receive(request("1"))
    action = s.receive(request("1"))
    assert isinstance(action, protocol.Reply)
    assert action.frame.error.type == "invalid_message"
    assert s.in_flight == {"1"}


def test_a_draining_session_refuses_new_requests_as_unavailable() -> None:
    s = session()
    s.draining = True
    action = s.receive(request("1"))
    assert isinstance(action, protocol.Reply)
    assert action.frame.error.type == "unavailable"
    assert s.in_flight == set()


def test_an_error_frame_carries_every_field_of_the_error_object() -> None:
    action = session().receive("nope")
    assert isinstance(action, protocol.Reply)
    frame = json.loads(protocol.encode(action.frame))
    assert frame["type"] == "error"
    assert set(frame["error"]) == {"type", "message", "recovery", "rule", "approval_id", "details"}


def test_the_hello_frame_matches_the_contract() -> None:
    hello = HelloFrame(
        protocol="kruxos.v1",
        gateway_version="0.1.0",
        session_id="s",
        key_name="alice",
        limits=Limits(max_message_bytes=1, max_in_flight=2, idle_timeout=3.0),
    )
    assert json.loads(protocol.encode(hello)) == {
        "type": "hello",
        "protocol": "kruxos.v1",
        "gateway_version": "0.1.0",
        "session_id": "s",
        "key_name": "alice",
        "limits": {"max_message_bytes": 1, "max_in_flight": 2, "idle_timeout": 3.0},
    }


def test_the_shutdown_event_has_no_id() -> None:
    assert json.loads(protocol.encode(protocol.shutdown_event())) == {
        "type": "event",
        "event": "gateway.shutdown",
        "data": {"reason": "draining"},
    }
