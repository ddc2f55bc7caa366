"""What a capability is: its definition and handler, the context it runs in, the registry of them,
and input validation.

A capability is a ``CapabilityDefinition`` (what agents see through ``capabilities.list``) plus an
async handler. Inputs are validated against the definition before the handler runs; a handler
returns its ``data`` or raises ``CapabilityFailed`` for a failed result.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.models import CapabilityDefinition, InputSpec, OutputSpec
from ..errors import InvalidInput, UnknownCapability

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from ..storage.db import Database
    from ._cgroups import CommandCgroups
    from .workspace import Workspace

# One logger for every Context (logging.getLogger takes the logging lock on each call).
_LOG = logging.getLogger("kruxos_gateway.capabilities")


@dataclass
class Context:
    """What a handler may use: configuration, workspace, database, and who is calling."""

    config: GatewayConfig
    workspace: Workspace
    db: Database
    key_name: str
    session_id: str
    invocation_id: str
    log: logging.Logger = field(default=_LOG)
    # Resolved at start-up from process.run_as_user/run_as_group (None: run as the gateway).
    run_as: RunAs | None = None
    # From process.cgroup_root, checked at start-up (None: process groups only).
    cgroups: CommandCgroups | None = None
    # The pipeline's decide-and-enforce (Pipeline.check), for check_policy; None: no policy to ask.
    policy: PolicyCheck | None = None

    async def check_policy(self, definition: CapabilityDefinition, inputs: dict[str, Any]) -> None:
        """Ask the policy about other inputs of this invocation (e.g. the URL of a redirect hop).

        Raises what the check before the handler would have: ``PolicyDenied``, ``ApprovalRequired``.
        """
        if self.policy is not None:
            await self.policy(self, definition, inputs)


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    extra_groups: tuple[int, ...]
    user: str
    #: (first uid, how many): each key's commands run as its own uid instead of ``uid``.
    key_uids: tuple[int, int] | None = None


Handler = Callable[[Context, dict[str, Any]], Awaitable[dict[str, Any]]]
PolicyCheck = Callable[[Context, CapabilityDefinition, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Capability:
    definition: CapabilityDefinition
    handler: Handler

    @property
    def name(self) -> str:
        return self.definition.name


class Registry:
    """The capabilities this gateway offers, by name."""

    def __init__(self, capabilities: Iterable[Capability]) -> None:
        self._by_name: dict[str, Capability] = {}
        for capability in capabilities:  # built once, by the composition root; a name is never reused
            if capability.name in self._by_name:
                raise ValueError(f"capability {capability.name!r} is registered twice")
            self._by_name[capability.name] = capability

    def get(self, name: str) -> Capability:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownCapability(
                f"no capability is named {name!r}",
                recovery=[("list_capabilities", "call capabilities.list to see the available names")],
                details={"name": name},
            ) from None

    def list(self, category: str | None = None, tag: str | None = None) -> list[CapabilityDefinition]:
        return [
            c.definition
            for name, c in sorted(self._by_name.items())
            if (category is None or c.definition.category == category)
            and (tag is None or tag in c.definition.tags)
        ]


def define(
    category: str,
    name: str,
    tags: list[str],
    purpose: str,
    when_to_use: str,
    inputs: list[InputSpec],
    outputs: list[tuple[str, str, str]],
    tier: str,
) -> CapabilityDefinition:
    """The definition of ``category.name``; ``outputs`` are (name, type, description) triples."""
    return CapabilityDefinition.model_validate(
        {
            "name": f"{category}.{name}",
            "category": category,
            "tags": tags,
            "purpose": purpose,
            "when_to_use": when_to_use,
            "inputs": inputs,
            "outputs": [OutputSpec(name=n, type=t, description=d) for n, t, d in outputs],
            "permission_tier": tier,
        }
    )


# --- input validation ---------------------------------------------------------------------------

_EXAMPLES = {
    "string": '"text"',
    "integer": "42",
    "number": "1.5",
    "boolean": "true",
    "object": '{"key": "value"}',
    "array": '["a", "b"]',
    "string_or_array": '"ls -la" or ["ls", "-la"]',
    "any": '0.85 or {"step": 3}',
}


def json_type(value: object) -> str:
    """The JSON type name of a decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _matches(spec_type: str, value: object) -> bool:
    if spec_type == "any":
        return True
    actual = json_type(value)
    if spec_type == "number":
        return actual in ("integer", "number")
    if spec_type == "string_or_array":
        return actual == "string" or (actual == "array" and all(isinstance(v, str) for v in value))  # type: ignore[attr-defined]
    return actual == spec_type


def validate_inputs(definition: CapabilityDefinition, inputs: dict[str, Any]) -> dict[str, Any]:
    """Check ``inputs`` against the definition; return them with defaults filled in.

    Raises ``InvalidInput`` naming the first offending input and how to fix it. ``null`` for an
    optional input means its default.
    """
    specs = {s.name: s for s in definition.inputs}
    for name in inputs:
        if name not in specs:
            known = ", ".join(specs) or "none"
            raise InvalidInput(
                name,
                f"{definition.name} has no input {name!r}",
                f"remove {name!r}; the inputs of {definition.name} are: {known}",
            )
    out: dict[str, Any] = {}
    for spec in definition.inputs:
        value = inputs.get(spec.name)
        if value is None:
            if spec.required:
                raise InvalidInput(
                    spec.name,
                    f"missing required input {spec.name!r}",
                    f"pass {spec.name} ({_describe_type(spec)}): {spec.description}",
                )
            out[spec.name] = spec.default
            continue
        if not _matches(spec.type, value):
            raise InvalidInput(
                spec.name,
                f"input {spec.name!r} must be {_describe_type(spec)}, got {json_type(value)}",
                f"pass {spec.name} as {_describe_type(spec)}, e.g. {_example(spec)}",
            )
        if spec.choices is not None and value not in spec.choices:
            allowed = ", ".join(repr(c) for c in spec.choices)
            raise InvalidInput(
                spec.name,
                f"input {spec.name!r} must be one of {allowed}, got {value!r}",
                f"pass {spec.name} as one of {allowed}",
            )
        out[spec.name] = value
    return out


def _example(spec: InputSpec) -> str:
    if spec.choices:
        return f'"{spec.choices[0]}"'
    if spec.type == "string" and spec.name in ("path", "src", "dst", "cwd"):
        return '"/workspace/notes.txt"' if spec.name != "cwd" else '"/workspace"'
    return _EXAMPLES[spec.type]


def _describe_type(spec: InputSpec) -> str:
    if spec.type == "string_or_array":
        return "a string or an array of strings"
    if spec.type == "any":
        return "any JSON value except null"
    article = "an" if spec.type[0] in "aeiou" else "a"
    return f"{article} {spec.type}"
