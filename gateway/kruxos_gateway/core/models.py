"""Pydantic models of everything that crosses the wire (see docs/protocol.md).

Client frames are validated through the one module-level ``CLIENT_FRAME`` adapter; gateway frames
are serialised with ``model_dump_json``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, TypeAdapter

InputType = Literal["string", "integer", "number", "boolean", "object", "array", "string_or_array", "any"]
PermissionTier = Literal["read", "write", "execute", "network", "notify", "admin"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecoveryAction(_Wire):
    action: str
    description: str


class ErrorInfo(_Wire):
    type: str
    message: str
    recovery: list[RecoveryAction] = []
    rule: str | None = None
    approval_id: str | None = None
    details: dict[str, Any] = {}


class InputSpec(_Wire):
    name: str
    type: InputType
    required: bool = False
    default: Any = None
    description: str
    # Allowed values, checked before the capability runs; described in `description` on the wire.
    choices: tuple[str, ...] | None = Field(default=None, exclude=True)


class OutputSpec(_Wire):
    name: str
    type: str
    description: str


class CapabilityDefinition(_Wire):
    name: str
    category: str
    tags: list[str]
    purpose: str
    when_to_use: str
    inputs: list[InputSpec]
    outputs: list[OutputSpec]
    permission_tier: PermissionTier


class InvocationResult(_Wire):
    invocation_id: str
    capability: str
    success: bool
    data: dict[str, Any] | None
    error: ErrorInfo | None
    duration_ms: float


# --- client -> gateway --------------------------------------------------------------------------


class RequestFrame(_Wire):
    type: Literal["request"]
    id: Annotated[str, Field(min_length=1, max_length=256)]
    method: str
    params: dict[str, Any] = {}


# v1 has a single client frame type; later ones join this union behind a discriminator on `type`.
ClientFrame = RequestFrame
CLIENT_FRAME: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
CLIENT_FRAME_TYPES = frozenset({"request"})


class ListParams(_Wire):
    category: str | None = None
    tag: str | None = None


class DescribeParams(_Wire):
    name: str


class InvokeParams(_Wire):
    name: str
    inputs: dict[str, Any] = {}


class PingParams(_Wire):
    pass


# --- gateway -> client --------------------------------------------------------------------------


class Limits(_Wire):
    max_message_bytes: int
    max_in_flight: int
    idle_timeout: float


class HelloFrame(_Wire):
    type: Literal["hello"] = "hello"
    protocol: str
    gateway_version: str
    session_id: str
    key_name: str
    limits: Limits


class ResponseFrame(_Wire):
    type: Literal["response"] = "response"
    id: str
    # A method's answer: a model (an InvocationResult, …) is serialised with the frame, in one pass,
    # as the model it is (SerializeAsAny), not first turned into a dict.
    result: dict[str, Any] | SerializeAsAny[BaseModel]


class ErrorFrame(_Wire):
    type: Literal["error"] = "error"
    id: str | None
    error: ErrorInfo


class EventFrame(_Wire):
    type: Literal["event"] = "event"
    event: str
    data: dict[str, Any] = {}


ServerFrame = HelloFrame | ResponseFrame | ErrorFrame | EventFrame
