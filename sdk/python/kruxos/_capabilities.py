"""``agent.capabilities``: discover and invoke capabilities.

The calls (method, params, result parsing) are defined once as :class:`Call` factories; the async and
sync namespaces only send them through their flavour of connection.
"""

from __future__ import annotations

import builtins
from typing import Any

from pydantic import BaseModel, ConfigDict

from kruxos._connection import AsyncConnection
from kruxos._protocol import Call, parse_result
from kruxos._sync import Portal
from kruxos.errors import ConfigurationError
from kruxos.models import CapabilityDefinition, InvocationResult

__all__ = [
    "AsyncCapabilities",
    "Capabilities",
    "describe_call",
    "invoke_call",
    "list_call",
]


class _ListResult(BaseModel):
    model_config = ConfigDict(extra="ignore")
    capabilities: list[CapabilityDefinition]


class _DescribeResult(BaseModel):
    model_config = ConfigDict(extra="ignore")
    capability: CapabilityDefinition


def list_call(category: str | None, tag: str | None) -> Call[list[CapabilityDefinition]]:
    params = {key: value for key, value in (("category", category), ("tag", tag)) if value is not None}
    return Call(
        "capabilities.list",
        params,
        lambda result: parse_result(_ListResult, result, "capabilities.list").capabilities,
    )


def describe_call(name: str) -> Call[CapabilityDefinition]:
    _check_name(name)
    return Call(
        "capabilities.describe",
        {"name": name},
        lambda result: parse_result(_DescribeResult, result, "capabilities.describe").capability,
        capability=name,
    )


def invoke_call(name: str, inputs: dict[str, Any]) -> Call[InvocationResult]:
    _check_name(name)
    result_type: type[InvocationResult] = InvocationResult
    return Call(
        "capabilities.invoke",
        {"name": name, "inputs": inputs},
        lambda result: parse_result(result_type, result, "capabilities.invoke"),
        capability=name,
    )


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"a capability name is a non-empty string such as 'filesystem.read', not {name!r}"
        )


class AsyncCapabilities:
    """Discover and invoke capabilities (``await agent.capabilities.…``)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def list(
        self, *, category: str | None = None, tag: str | None = None
    ) -> builtins.list[CapabilityDefinition]:
        """Capabilities sorted by name, optionally only those in ``category`` and/or with ``tag``."""
        return await self._connection.call(list_call(category, tag))

    async def describe(self, name: str) -> CapabilityDefinition:
        """The definition of ``name``; raises :class:`~kruxos.errors.UnknownCapability` if there is none."""
        return await self._connection.call(describe_call(name))

    async def invoke(self, name: str, /, **inputs: Any) -> InvocationResult:
        """Invoke the capability ``name`` with keyword ``inputs``.

        **Raises** when the gateway refused to run it: :class:`~kruxos.errors.UnknownCapability`,
        :class:`~kruxos.errors.InvalidInput`, :class:`~kruxos.errors.PolicyDenied` (``.rule``),
        :class:`~kruxos.errors.ApprovalRequired` (``.approval_id``), and connection, authentication,
        protocol and timeout errors.

        **Returns** an :class:`~kruxos.models.InvocationResult` when the capability ran, whether it
        succeeded or failed. Check ``result.success`` and read ``result.error``; or just read
        ``result.data``, which raises the result's :class:`~kruxos.errors.CapabilityError` if it failed
        (as does ``result.raise_for_error()``).

        ``name`` is positional-only, so a capability may have an input called ``name``.
        """
        return await self._connection.call(invoke_call(name, inputs))


class Capabilities:
    """Discover and invoke capabilities, blocking (``agent.capabilities.…``)."""

    def __init__(self, portal: Portal, connection: AsyncConnection) -> None:
        self._portal = portal
        self._connection = connection

    def list(
        self, *, category: str | None = None, tag: str | None = None
    ) -> builtins.list[CapabilityDefinition]:
        """Capabilities sorted by name, optionally only those in ``category`` and/or with ``tag``."""
        return self._portal.run(self._connection.call(list_call(category, tag)))

    def describe(self, name: str) -> CapabilityDefinition:
        """The definition of ``name``; raises :class:`~kruxos.errors.UnknownCapability` if there is none."""
        return self._portal.run(self._connection.call(describe_call(name)))

    def invoke(self, name: str, /, **inputs: Any) -> InvocationResult:
        """Invoke the capability ``name`` with keyword ``inputs``; blocking :meth:`AsyncCapabilities.invoke`.

        **Raises** when the gateway refused to run it (``UnknownCapability``, ``InvalidInput``,
        ``PolicyDenied``, ``ApprovalRequired``, connection/protocol/timeout errors). **Returns** an
        ``InvocationResult`` when it ran; reading ``.data`` of a failed result raises its
        ``CapabilityError``.
        """
        return self._portal.run(self._connection.call(invoke_call(name, inputs)))
