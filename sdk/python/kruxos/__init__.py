"""KruxOS Python SDK: connect agents to the KruxOS gateway over the kruxos.v1 supervision WebSocket."""

from kruxos._client import Agent, AsyncAgent, AsyncAgentConnector, KruxOS
from kruxos._version import __version__
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
)
from kruxos.models import CapabilityDefinition, ErrorResponse, InvocationResult

__all__ = [
    "Agent",
    "ApprovalRequired",
    "AsyncAgent",
    "AsyncAgentConnector",
    "AuthenticationError",
    "CapabilityDefinition",
    "CapabilityError",
    "ConfigurationError",
    "ConnectionClosed",
    "ErrorResponse",
    "GatewayConnectionError",
    "GatewayError",
    "GatewayUnavailable",
    "InvalidInput",
    "InvocationResult",
    "KruxOS",
    "KruxOSError",
    "PolicyDenied",
    "ProtocolError",
    "RateLimited",
    "RequestTimeout",
    "TooManyRequests",
    "UnknownCapability",
    "VersionConflict",
    "__version__",
]
