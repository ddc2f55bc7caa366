"""The typed Pydantic models that SDK calls return.

Every model ignores fields it does not know, so an older SDK keeps working against a newer gateway.
Models are frozen: they describe what the gateway said.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from kruxos.errors import _capability_error

__all__ = [
    "ApprovalStatus",
    "CapabilityDefinition",
    "CapabilityInput",
    "CapabilityOutput",
    "ErrorResponse",
    "InvocationResult",
    "RecoveryAction",
    "StateEntry",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RecoveryAction(_Model):
    """Something an agent can do about an error."""

    action: str
    """Machine-readable action, e.g. ``fix_input``."""
    description: str = ""
    """One sentence for a person or a model."""


class ErrorResponse(_Model):
    """The gateway's error object: what went wrong and what to do about it."""

    type: str
    """Machine-readable error type, e.g. ``not_found`` or ``policy_denied``."""
    message: str
    """One sentence for a person: what went wrong."""
    recovery: list[RecoveryAction] = Field(default_factory=list)
    """What the agent can do about it; may be empty."""
    rule: str | None = None
    """For ``policy_denied``: the policy rule that decided."""
    approval_id: str | None = None
    """For ``approval_required``: the approval to wait on."""
    details: dict[str, Any] = Field(default_factory=dict)
    """Structured extra fields (the input name, the limit, …)."""


class CapabilityInput(_Model):
    """One declared input of a capability."""

    name: str
    type: str
    """``string``, ``integer``, ``number``, ``boolean``, ``object``, ``array`` or ``string_or_array``."""
    required: bool = False
    default: Any = None
    description: str = ""


class CapabilityOutput(_Model):
    """One declared output field of a capability."""

    name: str
    type: str
    description: str = ""


class CapabilityDefinition(_Model):
    """What a capability does, when to use it, and what it takes and returns."""

    name: str
    """Dotted name, e.g. ``filesystem.read``."""
    category: str
    tags: list[str] = Field(default_factory=list)
    purpose: str = ""
    when_to_use: str = ""
    inputs: list[CapabilityInput] = Field(default_factory=list)
    outputs: list[CapabilityOutput] = Field(default_factory=list)
    permission_tier: str
    """``read``, ``write``, ``execute``, ``network``, ``notify`` or ``admin`` (least to most powerful)."""


class InvocationResult(_Model):
    """The outcome of an invocation that ran: it succeeded (``data``) or failed (``error``).

    Reading ``data`` of a failed result raises the result's :class:`~kruxos.errors.CapabilityError`, so
    code that does not check ``success`` still cannot mistake a failure for an empty answer.
    ``model_dump()`` reports the payload under ``data`` and never raises.
    """

    model_config = ConfigDict(populate_by_name=True)

    invocation_id: str
    capability: str
    success: bool
    data_: Any = Field(default=None, alias="data")
    """The raw payload (``None`` on failure); prefer :attr:`data`."""
    error: ErrorResponse | None = None
    duration_ms: float = 0.0

    @property
    def data(self) -> Any:
        """The capability's output; raises the result's ``CapabilityError`` if it failed."""
        self.raise_for_error()
        return self.data_

    def raise_for_error(self) -> None:
        """Raise the result's :class:`~kruxos.errors.CapabilityError` if the invocation failed."""
        if self.success:
            return
        error = self.error or ErrorResponse(type="execution_failed", message="the capability failed")
        raise _capability_error(error, capability=self.capability)

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {("data" if key == "data_" else key): value for key, value in dumped.items()}


class StateEntry(_Model):
    """A value in agent state, with its version."""

    key: str
    value: Any = None
    version: int | None = None
    found: bool = True
    updated_at: datetime | None = None


class ApprovalStatus(_Model):
    """Where an approval stands: pending, approved (with the invocation's ``data``) or rejected."""

    approval_id: str
    resolved: bool = False
    approved: bool | None = None
    reason: str | None = None
    data: Any = None
