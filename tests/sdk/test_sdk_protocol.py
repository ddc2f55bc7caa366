"""The sans-I/O protocol core, driven by feeding frames: no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kruxos._protocol import Answered, ClientProtocol, EventReceived, Failed, Ignored
from kruxos.errors import (
    ConfigurationError,
    ConnectionClosed,
    GatewayError,
    InvalidInput,
    ProtocolError,
    TooManyRequests,
)

HELLO = {
    "type": "hello",
    "protocol": "kruxos.v1",
    "gateway_version": "0.1.0",
    "session_id": "s",
    "key_name": "alice",
    "limits": {"max_message_bytes": 200, "max_in_flight": 2, "idle_timeout": 300.0},
}


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def error(type_: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "message": f"{type_} happened", "recovery": [], "details": {}} | extra


@pytest.fixture
def protocol() -> ClientProtocol:
    core = ClientProtocol()
    core.receive_hello(json.dumps(HELLO))
    return core


def test_hello_is_read_and_its_limits_apply(protocol: ClientProtocol) -> None:
    assert protocol.hello is not None
    assert protocol.hello.key_name == "alice"
    assert protocol.limits.max_in_flight == 2


def test_hello_tolerates_fields_from_newer_gateways() -> None:
    core = ClientProtocol()
    hello = core.receive_hello(json.dumps(HELLO | {"features": ["x"]}))
    assert hello.session_id == "s"


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(frame(type="event", event="x", data=None), id="event-first"),
        pytest.param(json.dumps(HELLO | {"protocol": "kruxos.v2"}), id="other-protocol"),
        pytest.param("not json", id="not-json"),
        pytest.param(b"\x00", id="binary"),
    ],
)
def test_anything_but_a_kruxos_v1_hello_first_is_a_protocol_error(first: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        ClientProtocol().receive_hello(first)


def test_requests_get_increasing_string_ids_and_are_encoded_as_request_frames(
    protocol: ClientProtocol,
) -> None:
    first_id, first = protocol.send_request("ping", {})
    second_id, _ = protocol.send_request("capabilities.list", {"tag": "safe"})
    assert (first_id, second_id) == ("1", "2")
    assert json.loads(first) == {"type": "request", "id": "1", "method": "ping", "params": {}}
    assert protocol.in_flight == 2


def test_a_response_answers_its_request_whatever_the_order(protocol: ClientProtocol) -> None:
    protocol.send_request("ping", {})
    protocol.send_request("ping", {})
    assert protocol.receive(frame(type="response", id="2", result={"pong": True})) == Answered(
        "2", {"pong": True}
    )
    assert protocol.receive(frame(type="response", id="1", result={})) == Answered("1", {})
    assert protocol.in_flight == 0


@pytest.mark.parametrize(
    ("error_object", "expected"),
    [
        pytest.param(error("invalid_input", details={"input": "path"}), InvalidInput, id="invalid-input"),
        pytest.param(error("too_many_requests"), TooManyRequests, id="too-many-requests"),
        pytest.param(error("internal_error"), GatewayError, id="internal-error"),
        pytest.param(error("unknown_method"), ProtocolError, id="unknown-method"),
    ],
)
def test_an_error_frame_fails_its_request_with_the_mapped_exception(
    protocol: ClientProtocol, error_object: dict[str, Any], expected: type[Exception]
) -> None:
    protocol.send_request("capabilities.invoke", {"name": "x", "inputs": {}})
    outcome = protocol.receive(frame(type="error", id="1", error=error_object))
    assert isinstance(outcome, Failed)
    assert type(outcome.error) is expected


def test_an_error_frame_without_id_is_ignored_and_no_request_fails(protocol: ClientProtocol) -> None:
    protocol.send_request("ping", {})
    assert isinstance(protocol.receive(frame(type="error", id=None, error=error("invalid_message"))), Ignored)
    assert protocol.in_flight == 1


def test_an_answer_to_a_forgotten_request_is_ignored(protocol: ClientProtocol) -> None:
    request_id, _ = protocol.send_request("ping", {})
    protocol.forget(request_id)
    assert isinstance(protocol.receive(frame(type="response", id=request_id, result={})), Ignored)


def test_events_are_delivered_including_unknown_ones(protocol: ClientProtocol) -> None:
    outcome = protocol.receive(frame(type="event", event="state.changed", data={"key": "k"}))
    assert outcome == EventReceived("state.changed", {"key": "k"})


def test_a_malformed_answer_fails_its_request_instead_of_leaving_it_pending(protocol: ClientProtocol) -> None:
    protocol.send_request("ping", {})
    outcome = protocol.receive(frame(type="response", id="1", result="not an object"))
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, ProtocolError)
    assert protocol.in_flight == 0


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("][", id="not-json"),
        pytest.param(frame(type="mystery"), id="unknown-type"),
        pytest.param(b"binary", id="binary-frame"),
    ],
)
def test_an_unreadable_frame_with_no_pending_id_is_ignored(
    protocol: ClientProtocol, message: str | bytes
) -> None:
    assert isinstance(protocol.receive(message), Ignored)


def test_closing_fails_every_pending_request(protocol: ClientProtocol) -> None:
    protocol.send_request("ping", {})
    protocol.send_request("ping", {})
    failed = protocol.fail_all(lambda: ConnectionClosed("gone"))
    assert [f.id for f in failed] == ["1", "2"]
    assert protocol.in_flight == 0


def test_a_request_over_max_message_bytes_is_refused_before_it_is_sent(protocol: ClientProtocol) -> None:
    with pytest.raises(ProtocolError, match="over the gateway's limit of 200 bytes"):
        protocol.send_request("capabilities.invoke", {"name": "x", "inputs": {"content": "x" * 300}})
    assert protocol.in_flight == 0


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(object(), id="object"),
        pytest.param(float("nan"), id="nan"),
        pytest.param({1j}, id="set"),
        pytest.param("\ud800", id="lone-surrogate"),
    ],
)
def test_inputs_that_are_not_json_are_a_configuration_error(protocol: ClientProtocol, value: object) -> None:
    with pytest.raises(ConfigurationError, match="cannot be sent as JSON"):
        protocol.send_request("capabilities.invoke", {"name": "x", "inputs": {"v": value}})
    assert protocol.in_flight == 0


@given(order=st.permutations(range(8)))
def test_each_request_gets_its_own_answer_whatever_the_arrival_order(order: list[int]) -> None:
    core = ClientProtocol()
    core.receive_hello(json.dumps(HELLO | {"limits": {}}))
    ids = [core.send_request("ping", {"n": n})[0] for n in range(8)]
    outcomes = [core.receive(frame(type="response", id=ids[n], result={"n": n})) for n in order]
    assert outcomes == [Answered(ids[n], {"n": n}) for n in order]
    assert core.in_flight == 0
