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
    "StateChange",
    "StateEntry",
    "StateHistory",
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
    """A value in agent state, with its version.

    A missing key is not an error: ``found`` is False, ``value`` None and ``version`` 0 (for shared
    state, 0 is also the ``expected_version`` that creates a key only if it is absent).
    """

    key: str
    value: Any = None
    version: int | None = None
    found: bool = True
    updated_at: datetime | None = None
    revision: int | None = None
    """Shared state: the global revision of the key's last change (watches resume from revisions)."""
    updated_by: str | None = None
    """Shared state: the name of the API key that last wrote it."""


class StateHistory(_Model):
    """The kept versions of a persistent key, newest first (``persistent.history``)."""

    key: str
    versions: list[StateEntry] = Field(default_factory=list)


class StateChange(_Model):
    """One change of a shared key, as a watch callback receives it.

    Callbacks get every change under their prefix once, in ``revision`` order. ``deleted`` is True
    (and ``value`` None) when the key was deleted.
    """

    key: str
    value: Any = None
    version: int
    """The key's new version."""
    revision: int
    """The change's global revision; pass the last one seen as ``from_revision`` to resume a watch."""
    deleted: bool = False
    updated_at: datetime | None = None
    updated_by: str | None = None


class ApprovalStatus(_Model):
    """Where an approval stands: pending, approved (with the invocation's ``data``) or rejected.

    ``approvals.check()`` returns it at any time; ``approvals.wait()`` once it is ``resolved``. An
    approved invocation ran exactly once in the gateway: ``success``, ``data`` and ``error`` are its
    outcome. A rejection or an expiry has ``approved`` False and the reason in ``reason``.
    """

    approval_id: str
    status: str = "pending"
    """``pending``, ``approved`` (about to run), ``running``, then ``completed``; or ``rejected``,
    ``expired`` (no decision in time: a rejection), ``interrupted`` (the gateway stopped mid-run)."""
    resolved: bool = False
    """True once nothing more will happen: completed, rejected, expired or interrupted."""
    approved: bool | None = None
    """None while pending; True once a person approved; False if rejected or expired."""
    reason: str | None = None
    """The operator's reason (required for a rejection), or why it expired or was interrupted."""
    data: Any = None
    """The approved invocation's output, once it completed successfully."""
    success: bool | None = None
    """Whether the approved invocation succeeded (None until it ran)."""
    error: ErrorResponse | None = None
    """Why the approved invocation failed, if it did."""
    invocation_id: str | None = None
    capability: str | None = None
    rule: str | None = None
    """The policy rule that required the approval."""
    duration_ms: float | None = None
    created_at: datetime | None = None
    expires_at: datetime | None = None
    decided_at: datetime | None = None
    decided_by: str | None = None
    """The operator who decided (``gateway`` for an expiry)."""
