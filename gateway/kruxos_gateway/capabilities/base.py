"""What a capability is: its definition and handler, the context it runs in, the registry of them,
and input validation.

A capability is a ``CapabilityDefinition`` (what agents see through ``capabilities.list``), the typed
model of its inputs (``inputs.py``: it declares them in the definition and validates them), and an
async handler. A handler gets the validated inputs and returns its ``data`` or raises
``CapabilityFailed`` for a failed result.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.models import CapabilityDefinition, OutputSpec
from ..errors import UnknownCapability
from .inputs import Inputs, declared, validate

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
    """A definition (``inputs`` as the model declares them), its input model, and its handler."""

    definition: CapabilityDefinition
    handler: Handler
    inputs: type[Inputs]

    def __post_init__(self) -> None:
        if self.definition.inputs != declared(self.inputs):
            raise TypeError(
                f"{self.name}: its definition's inputs are not those {self.inputs.__name__} declares"
            )

    @property
    def name(self) -> str:
        return self.definition.name

    def validate(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs checked with the model, defaults filled in; else ``InvalidInput``."""
        return validate(self.name, self.inputs, self.definition.inputs, inputs)


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
    inputs: type[Inputs],
    outputs: list[tuple[str, str, str]],
    tier: str,
) -> CapabilityDefinition:
    """The definition of ``category.name``: its inputs as ``inputs`` declares them; ``outputs`` are
    (name, type, description) triples."""
    return CapabilityDefinition.model_validate(
        {
            "name": f"{category}.{name}",
            "category": category,
            "tags": tags,
            "purpose": purpose,
            "when_to_use": when_to_use,
            "inputs": declared(inputs),
            "outputs": [OutputSpec(name=n, type=t, description=d) for n, t, d in outputs],
            "permission_tier": tier,
        }
    )
