"""The policy in force in a running gateway, and how it is replaced.

:class:`PolicyGate` answers the pipeline's question — what does the policy decide for this key,
capability and inputs — with a :class:`~.rules.Decision` value; acting on it (refusing, asking for an
approval) is the pipeline's next stage (``core/pipeline.py``), not a side effect of asking.

``reload()`` swaps the policy atomically (SIGHUP, ``kruxosctl policy reload``); a broken or missing
file is refused and the previous policy stays in force. Never the shipped default: a file deleted by
mistake must not replace the operator's rules.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .rules import Decision, Policy, PolicyError, load_policy

if TYPE_CHECKING:
    from ..capabilities.workspace import Workspace
    from ..core.models import CapabilityDefinition

log = logging.getLogger(__name__)


class PolicyGate:
    """The current policy of one gateway."""

    def __init__(self, policy: Policy, path: Path | None = None, workspace: Workspace | None = None) -> None:
        self.policy = policy
        self.path = path
        self.workspace = workspace  # path rules also see where symlinks lead (rules.py, *Paths*)

    def decide(self, key_name: str, definition: CapabilityDefinition, inputs: Mapping[str, Any]) -> Decision:
        return self.policy.decide(key_name, definition, inputs)

    def may_allow(self, key_name: str, definition: CapabilityDefinition) -> bool:
        return self.policy.may_allow(key_name, definition)

    def reload(self) -> Policy:
        """Load the policy file again; on error raise ``PolicyError`` and keep the current policy."""
        if self.path is None:
            raise PolicyError("<policy>", None, "this gateway has no policy file to reload")
        self.policy = load_policy(self.path, workspace=self.workspace)
        log.info(
            "policy reloaded from %s: %d rule(s), default %s",
            self.path,
            len(self.policy.rules),
            self.policy.default,
        )
        return self.policy

    def reload_logged(self) -> None:
        """SIGHUP: reload, and log (not raise) a refusal."""
        try:
            self.reload()
        except PolicyError as exc:
            log.error("policy reload refused, the previous policy stays in force: %s", exc.one_line())
