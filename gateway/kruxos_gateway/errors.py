"""Errors raised inside the gateway, each of which maps to one `kruxos.v1` error object.

Every class carries the wire ``type`` it becomes, so the protocol core turns any of them into an
``error`` frame (or a failed ``InvocationResult``) in one place::

    GatewayError                       root; never leaks a traceback to a client
    ├── ProtocolError                  the frame itself is wrong (SDK: ProtocolError)
    │   ├── InvalidMessage             invalid_message
    │   ├── UnknownMessageType         unknown_message_type
    │   ├── UnknownMethod              unknown_method
    │   └── MessageTooLarge            message_too_large (the connection is then closed 1009)
    ├── TooManyRequests                too_many_requests
    ├── Unavailable                    unavailable (the gateway is draining)
    ├── UnknownCapability              unknown_capability
    ├── InvalidInput                   invalid_input
    ├── PolicyDenied                   policy_denied (reserved for the policy engine)
    ├── ApprovalRequired               approval_required (reserved for approvals)
    ├── CapabilityFailed               the capability ran and failed (not_found, too_large, …)
    │   ├── PathOutsideWorkspace       path_outside_workspace
    │   └── QuotaExceeded              quota_exceeded (a per-key quota, ``quotas.*``)
    └── InternalError                  internal_error

    ConfigError                        a bad configuration file (start-up only; not a wire error)
"""

from __future__ import annotations

from typing import Any

from .core.models import ErrorInfo, RecoveryAction


class GatewayError(Exception):
    """Root of every error the gateway reports to a client."""

    error_type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        recovery: list[tuple[str, str]] | None = None,
        details: dict[str, Any] | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.recovery = recovery or []
        self.details = details or {}
        if error_type is not None:
            self.error_type = error_type

    def to_info(self) -> ErrorInfo:
        """The wire error object for this error."""
        return ErrorInfo(
            type=self.error_type,
            message=self.message,
            recovery=[RecoveryAction(action=a, description=d) for a, d in self.recovery],
            rule=getattr(self, "rule", None),
            approval_id=getattr(self, "approval_id", None),
            details=self.details,
        )


class ProtocolError(GatewayError):
    """The frame could not be understood."""

    #: The id of the request the frame carried, when it could be read; else the answer has id null.
    request_id: str | None = None


class InvalidMessage(ProtocolError):
    """Not JSON, not an object, or an object of the wrong shape."""

    error_type = "invalid_message"


class UnknownMessageType(ProtocolError):
    """The frame's ``type`` is not one the gateway knows."""

    error_type = "unknown_message_type"


class UnknownMethod(ProtocolError):
    """The request's ``method`` is not one the gateway knows."""

    error_type = "unknown_method"


class MessageTooLarge(ProtocolError):
    """The frame is over ``max_message_bytes``."""

    error_type = "message_too_large"


class TooManyRequests(GatewayError):
    """More than ``max_in_flight`` requests are in flight on this connection."""

    error_type = "too_many_requests"


class Unavailable(GatewayError):
    """The gateway is draining for shutdown and starts no new work."""

    error_type = "unavailable"


class UnknownCapability(GatewayError):
    """No capability has that name."""

    error_type = "unknown_capability"


class InvalidInput(GatewayError):
    """An input is missing, unknown, or of the wrong type or value."""

    error_type = "invalid_input"

    def __init__(self, name: str, message: str, fix: str) -> None:
        super().__init__(message, recovery=[("fix_input", fix)], details={"input": name})
        self.input = name


class PolicyDenied(GatewayError):
    """A policy rule denied the invocation (raised by a policy hook)."""

    error_type = "policy_denied"

    def __init__(self, message: str, rule: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.rule = rule


class ApprovalRequired(GatewayError):
    """A person must approve the invocation first (raised by a policy hook)."""

    error_type = "approval_required"

    def __init__(self, message: str, approval_id: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.approval_id = approval_id


class CapabilityFailed(GatewayError):
    """The capability ran and failed; becomes a failed ``InvocationResult``, not an error frame."""

    def __init__(self, error_type: str, message: str, **kwargs: Any) -> None:
        super().__init__(message, error_type=error_type, **kwargs)


class PathOutsideWorkspace(CapabilityFailed):
    """A path points outside the workspace (absolute, ``..`` or through a symlink)."""

    def __init__(self, path: str) -> None:
        super().__init__(
            "path_outside_workspace",
            f"{path} is outside the workspace",
            recovery=[
                (
                    "use_workspace_path",
                    "use a path under /workspace (or relative to it) that does not leave it "
                    "through '..' or a symlink",
                )
            ],
            details={"path": path},
        )


class QuotaExceeded(CapabilityFailed):
    """What the API key holds would go past one of its quotas (``quotas.NAME`` in the configuration).

    ``details`` name the quota (``quotas.NAME``), what the key uses now and the limit; the recovery says
    how to make room, and that the operator can raise the quota. Raised by a capability it is a failed
    result; raised by a method (``transaction.invoke``) or at the handshake, an error.
    """

    def __init__(self, quota: str, message: str, *, used: int, limit: int, fix: str, **details: Any) -> None:
        super().__init__(
            "quota_exceeded",
            message,
            recovery=[
                ("make_room", fix),
                ("ask_operator", f"ask the operator to raise quotas.{quota} in the gateway's configuration"),
            ],
            details={"quota": f"quotas.{quota}", "used": used, "limit": limit, **details},
        )
        self.quota = quota


class InternalError(GatewayError):
    """A bug in the gateway; the message says nothing secret."""

    error_type = "internal_error"


class ConfigError(Exception):
    """The configuration file is missing, not YAML, or does not match the schema."""
