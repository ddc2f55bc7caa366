"""Every error the SDK raises.

All of them derive from :class:`KruxOSError`; no exception of a dependency (``websockets``,
``pydantic``, ``json``) or of the OS reaches SDK users: the SDK translates them at its boundary.

.. code-block:: text

    KruxOSError
    ├── ConfigurationError          the SDK was used or configured wrongly (misuse; fix the code)
    ├── GatewayConnectionError      no working connection to the gateway
    │   ├── GatewayUnavailable      unreachable, refused, handshake timeout, or draining (HTTP 503)
    │   ├── AuthenticationError     the gateway refused the API key (HTTP 401 / 400)
    │   ├── RateLimited             too many failed handshakes from this address, or this key has as
    │   │                           many connections open as its quota allows (HTTP 429)
    │   └── ConnectionClosed        the connection closed (before or while a request was in flight)
    ├── ProtocolError               a frame broke the kruxos.v1 contract, on either side
    ├── RequestTimeout              no answer within ``request_timeout`` (also a builtin TimeoutError)
    ├── ApprovalTimeout             ``approvals.wait`` gave up; the approval stays pending (a TimeoutError)
    ├── TooManyRequests             more requests in flight than the gateway allows
    ├── GatewayError                the gateway failed internally (``internal_error``)
    └── CapabilityError             a capability was refused or ran and failed
        ├── UnknownCapability       no capability has that name
        ├── InvalidInput            an input is missing, unknown, or of the wrong type or value
        ├── PolicyDenied            a policy rule denied the invocation (``rule``)
        ├── ApprovalRequired        a person must approve the invocation first (``approval_id``)
        ├── VersionConflict         optimistic-lock failure on shared state
        └── QuotaExceeded           a per-key quota of the gateway (``quota``, ``used``, ``limit``)

``invoke()`` *raises* the subclasses of :class:`CapabilityError` above when the gateway refused to run
the invocation. When the capability ran and failed, ``invoke()`` returns a failed ``InvocationResult``
instead; reading its ``data`` (or calling ``raise_for_error()``) raises a :class:`CapabilityError`
whose ``type`` is the gateway's error type (``not_found``, ``timeout``, …).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kruxos.models import ErrorResponse, RecoveryAction

__all__ = [
    "ApprovalRequired",
    "ApprovalTimeout",
    "AuthenticationError",
    "CapabilityError",
    "ConfigurationError",
    "ConnectionClosed",
    "GatewayConnectionError",
    "GatewayError",
    "GatewayUnavailable",
    "InvalidInput",
    "KruxOSError",
    "PolicyDenied",
    "ProtocolError",
    "QuotaExceeded",
    "RateLimited",
    "RequestTimeout",
    "TooManyRequests",
    "UnknownCapability",
    "VersionConflict",
]


class KruxOSError(Exception):
    """Root of every error the SDK raises."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


class ConfigurationError(KruxOSError):
    """The SDK was used or configured wrongly: a missing or malformed address, key or argument."""


class GatewayConnectionError(KruxOSError):
    """There is no working connection to the gateway."""


class GatewayUnavailable(GatewayConnectionError):
    """The gateway could not be reached, did not answer the handshake in time, or is draining."""


class AuthenticationError(GatewayConnectionError):
    """The gateway refused the API key during the handshake (HTTP 401, or 400 for a malformed header)."""

    def __init__(self, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})"


class RateLimited(GatewayConnectionError):
    """Too many failed handshakes from this address (or connections of this key); see ``retry_after``."""

    # Also raised, without retry_after, when the key already has as many connections open as the
    # gateway's quotas.connections allows (the message says so): close one first.

    def __init__(self, message: str, *, retry_after: float | None) -> None:
        self.retry_after = retry_after
        super().__init__(message)

    def __str__(self) -> str:
        if self.retry_after is None:
            return self.message
        return f"{self.message} (retry after {self.retry_after:g} s)"


class ConnectionClosed(GatewayConnectionError):
    """The connection is closed: the client disconnected, or the gateway closed it (``code``, ``reason``)."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(message)

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        suffix = f": {self.reason}" if self.reason else ""
        return f"{self.message} (close code {self.code}{suffix})"


class ProtocolError(KruxOSError):
    """A frame broke the kruxos.v1 contract: the gateway rejected ours, or sent one the SDK cannot read."""

    def __init__(self, message: str, *, type: str | None = None) -> None:  # the wire field is called "type"
        self.type = type
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.type else self.message


class RequestTimeout(KruxOSError, TimeoutError):
    """The gateway did not answer a request within the connection's ``request_timeout``."""

    def __init__(self, message: str, *, method: str, timeout: float) -> None:
        self.method = method
        self.timeout = timeout
        super().__init__(message)


class ApprovalTimeout(KruxOSError, TimeoutError):
    """``approvals.wait`` returned no decision within ``timeout`` s; the approval is still pending."""

    def __init__(self, approval_id: str, timeout: float) -> None:
        self.approval_id = approval_id
        self.timeout = timeout
        super().__init__(
            f"approval {approval_id} is still pending after {timeout:g} s; it stays pending: "
            "wait again, or check it later with approvals.check"
        )


class TooManyRequests(KruxOSError):
    """More requests were in flight on this connection than the gateway allows; retry later."""


class GatewayError(KruxOSError):
    """The gateway failed internally (``internal_error``); the message says nothing secret."""


class CapabilityError(KruxOSError):
    """A capability invocation was refused, or ran and failed; ``type`` says why, ``recovery`` what to do."""

    def __init__(
        self,
        type: str,  # the wire field is called "type"
        message: str,
        *,
        recovery: Sequence[RecoveryAction] = (),
        details: Mapping[str, Any] | None = None,
        capability: str | None = None,
    ) -> None:
        self.type = type
        self.recovery: list[RecoveryAction] = list(recovery)
        self.details: dict[str, Any] = dict(details or {})
        self.capability = capability
        super().__init__(message)

    def __str__(self) -> str:
        where = f" ({self.capability})" if self.capability else ""
        return f"{self.type}{where}: {self.message}"


class UnknownCapability(CapabilityError):
    """No capability has that name."""


class InvalidInput(CapabilityError):
    """An input is missing, unknown, or of the wrong type or value (``input`` names it when known)."""

    @property
    def input(self) -> str | None:
        """The name of the offending input, from ``details["input"]``."""
        value = self.details.get("input")
        return value if isinstance(value, str) else None


class PolicyDenied(CapabilityError):
    """A policy rule denied the invocation; ``rule`` names it."""

    def __init__(
        self,
        type: str,  # the wire field is called "type"
        message: str,
        *,
        rule: str | None,
        recovery: Sequence[RecoveryAction] = (),
        details: Mapping[str, Any] | None = None,
        capability: str | None = None,
    ) -> None:
        self.rule = rule
        super().__init__(type, message, recovery=recovery, details=details, capability=capability)

    def __str__(self) -> str:
        return f"{super().__str__()} (rule: {self.rule})" if self.rule else super().__str__()


class ApprovalRequired(CapabilityError):
    """A person must approve the invocation first; ``approval_id`` is the approval to wait on."""

    def __init__(
        self,
        type: str,  # the wire field is called "type"
        message: str,
        *,
        approval_id: str | None,
        recovery: Sequence[RecoveryAction] = (),
        details: Mapping[str, Any] | None = None,
        capability: str | None = None,
    ) -> None:
        self.approval_id = approval_id
        super().__init__(type, message, recovery=recovery, details=details, capability=capability)

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (approval_id: {self.approval_id})" if self.approval_id else base


class VersionConflict(CapabilityError):
    """Optimistic-lock failure on shared state: someone else wrote first; re-read and retry."""


class QuotaExceeded(CapabilityError):
    """The invocation would take this API key past a quota of the gateway (``quota``, ``used``, ``limit``)."""

    # recovery says how to make room, or to ask the operator to raise the quota.

    @property
    def quota(self) -> str | None:
        """The quota's name in the gateway's configuration, from ``details["quota"]``."""
        value = self.details.get("quota")
        return value if isinstance(value, str) else None

    @property
    def used(self) -> int | None:
        """What the key holds now, from ``details["used"]``."""
        value = self.details.get("used")
        return value if isinstance(value, int) else None

    @property
    def limit(self) -> int | None:
        """The quota, from ``details["limit"]``."""
        value = self.details.get("limit")
        return value if isinstance(value, int) else None


# The one place where an error object from the gateway becomes an exception. Types not listed here
# (the "ran and failed" types such as not_found, and types added by newer gateways) are CapabilityError.
_PROTOCOL_TYPES = frozenset(
    {"invalid_message", "unknown_message_type", "unknown_method", "message_too_large"}
)
_CAPABILITY_TYPES: dict[str, type[CapabilityError]] = {
    "unknown_capability": UnknownCapability,
    "invalid_input": InvalidInput,
    "version_conflict": VersionConflict,
    "quota_exceeded": QuotaExceeded,
}


def _from_error_object(error: ErrorResponse, *, capability: str | None = None) -> KruxOSError:
    """Build the exception for an error object received in an ``error`` frame or a failed result."""
    if error.type in _PROTOCOL_TYPES:
        return ProtocolError(error.message, type=error.type)
    if error.type == "too_many_requests":
        return TooManyRequests(error.message)
    if error.type == "internal_error":
        return GatewayError(error.message)
    return _capability_error(error, capability=capability)


def _capability_error(error: ErrorResponse, *, capability: str | None = None) -> CapabilityError:
    """Build the CapabilityError (or the subclass its type names) for an error object."""
    common: dict[str, Any] = {"recovery": error.recovery, "details": error.details, "capability": capability}
    if error.type == "policy_denied":
        return PolicyDenied(error.type, error.message, rule=error.rule, **common)
    if error.type == "approval_required":
        return ApprovalRequired(error.type, error.message, approval_id=error.approval_id, **common)
    cls = _CAPABILITY_TYPES.get(error.type, CapabilityError)
    return cls(error.type, error.message, **common)
