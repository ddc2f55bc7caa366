"""Errors raised inside the gateway, each of which maps to one `kruxos.v1` error object.

One class per wire ``type``, which it carries as ``error_type``; nothing is made from a type string.
Where a class sits decides what the wire shows: a ``CapabilityFailed`` raised by a capability's
handler becomes a failed ``InvocationResult``; every other ``GatewayError`` (or a ``CapabilityFailed``
raised outside a handler) becomes an ``error`` frame, built in one place (``to_info``)::

    GatewayError                       root; never leaks a traceback to a client
    ├── ProtocolError                  the frame itself is wrong (SDK: ProtocolError)
    │   ├── InvalidMessage             invalid_message
    │   ├── UnknownMessageType         unknown_message_type
    │   ├── UnknownMethod              unknown_method
    │   ├── MessageTooLarge            message_too_large (the connection is then closed 1009)
    │   └── InputOutOfBounds           invalid_input (nested too deep, or a number out of range)
    ├── TooManyRequests                too_many_requests (in flight, open transactions, watches)
    ├── Unavailable                    unavailable (the gateway is draining)
    ├── UnknownCapability              unknown_capability
    ├── InvalidInput                   invalid_input
    ├── UnknownTransaction             invalid_input (no such open transaction on this connection)
    ├── PolicyDenied                   policy_denied (a policy rule denied it; ``rule`` set)
    ├── ApprovalRequired               approval_required (an approval is pending; ``approval_id`` set)
    ├── ApprovalNotFound               not_found (approvals.check / approvals.wait)
    ├── HistoryTrimmed                 history_trimmed (a watch cannot resume without a gap)
    ├── NotTransactional               not_transactional (cannot be undone inside a transaction)
    ├── CapabilityFailed               the capability ran and failed (a failed InvocationResult)
    │   ├── NotFound                   not_found
    │   ├── AlreadyExists              already_exists
    │   ├── NotADirectory              not_a_directory
    │   ├── IsADirectory               is_a_directory
    │   ├── PermissionDenied           permission_denied
    │   ├── PathOutsideWorkspace       path_outside_workspace
    │   ├── TooLarge                   too_large
    │   ├── VersionConflict            version_conflict
    │   ├── HostNotAllowed             host_not_allowed
    │   ├── NetworkError               network_error
    │   ├── ExecutionFailed            execution_failed
    │   └── QuotaExceeded              quota_exceeded (a per-key quota, ``quotas.*``)
    └── InternalError                  internal_error

Not wire errors (start-up, reload and the command lines)::

    ConfigError                        a bad configuration file
    policy.rules.PolicyError           a policy file that cannot be used (refused at start-up or reload)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core.models import ErrorInfo


class GatewayError(Exception):
    """Root of every error the gateway reports to a client."""

    error_type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        recovery: list[tuple[str, str]] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.recovery = recovery or []
        self.details = details or {}

    def to_info(self) -> ErrorInfo:
        """The wire error object for this error."""
        # Imported here, not with the module: the file worker (capabilities/fs_worker.py) raises
        # these errors without pydantic, and only the gateway turns them into wire objects.
        from .core.models import ErrorInfo, RecoveryAction

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


class InputOutOfBounds(ProtocolError):
    """A value of the frame is nested too deep or is a number out of range: ``invalid_input``, refused
    before the request runs, naming the input (or the params member) that holds it."""

    error_type = "invalid_input"

    def __init__(self, field: str, message: str, fix: str) -> None:
        super().__init__(message, recovery=[("fix_input", fix)], details={"input": field})


class TooManyRequests(GatewayError):
    """This connection holds too much at once: requests in flight, open transactions or watches."""

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


class UnknownTransaction(GatewayError):
    """``transaction_id`` names no open transaction of this connection: ``invalid_input``."""

    error_type = "invalid_input"

    def __init__(self, transaction_id: str) -> None:
        super().__init__(
            f"no open transaction {transaction_id!r} on this connection (it was committed, rolled back, "
            "or never begun here)",
            recovery=[("begin_transaction", "begin a new transaction")],
            details={"input": "transaction_id", "transaction_id": transaction_id},
        )


class PolicyDenied(GatewayError):
    """A policy rule denied the invocation (raised by the pipeline's enforce stage)."""

    error_type = "policy_denied"

    def __init__(self, message: str, rule: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.rule = rule


class ApprovalRequired(GatewayError):
    """A person must approve the invocation first; the approval is recorded and pending."""

    error_type = "approval_required"

    def __init__(self, message: str, approval_id: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.approval_id = approval_id


class ApprovalNotFound(GatewayError):
    """No approval with that id belongs to the caller's key (another key's approval looks the same)."""

    error_type = "not_found"


class HistoryTrimmed(GatewayError):
    """A watch's ``from_revision`` reaches back past the shared-state changes still kept."""

    error_type = "history_trimmed"


class NotTransactional(GatewayError):
    """The capability (or the path it would change) cannot be undone, so it is refused inside a
    transaction."""

    error_type = "not_transactional"


class CapabilityFailed(GatewayError):
    """The capability ran and failed; becomes a failed ``InvocationResult``, not an error frame.

    Raise one of its subclasses, which carry the wire type.
    """


class NotFound(CapabilityFailed):
    """The path (or program) does not exist."""

    error_type = "not_found"


class AlreadyExists(CapabilityFailed):
    """Something is already at the path, and the capability would not replace it."""

    error_type = "already_exists"


class NotADirectory(CapabilityFailed):
    """The path, or one of its parents, is not a directory."""

    error_type = "not_a_directory"


class IsADirectory(CapabilityFailed):
    """The path is a directory where a file was wanted."""

    error_type = "is_a_directory"


class PermissionDenied(CapabilityFailed):
    """The gateway's user may not do this (or the workspace root itself would be changed)."""

    error_type = "permission_denied"


class PathOutsideWorkspace(CapabilityFailed):
    """A path points outside the workspace (absolute, ``..`` or through a symlink)."""

    error_type = "path_outside_workspace"

    def __init__(self, path: str) -> None:
        super().__init__(
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


class TooLarge(CapabilityFailed):
    """A file, a value or a session is over a size or count limit of the configuration."""

    error_type = "too_large"


class VersionConflict(CapabilityFailed):
    """A shared-state key is not at the version the write expected (optimistic locking)."""

    error_type = "version_conflict"


class HostNotAllowed(CapabilityFailed):
    """The network policy refuses the host, or an address it resolves to."""

    error_type = "host_not_allowed"


class NetworkError(CapabilityFailed):
    """The request could not be completed: no answer, a refused connection, a broken TLS session."""

    error_type = "network_error"


class ExecutionFailed(CapabilityFailed):
    """The capability failed in a way no more specific type names (the message says how)."""

    error_type = "execution_failed"


class QuotaExceeded(CapabilityFailed):
    """What the API key holds would go past one of its quotas (``quotas.NAME`` in the configuration).

    ``details`` name the quota (``quotas.NAME``), what the key uses now and the limit; the recovery says
    how to make room, and that the operator can raise the quota. Raised by a capability it is a failed
    result; raised by a method (``transaction.invoke``) or at the handshake, an error.
    """

    error_type = "quota_exceeded"

    def __init__(self, quota: str, message: str, *, used: int, limit: int, fix: str, **details: Any) -> None:
        super().__init__(
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
