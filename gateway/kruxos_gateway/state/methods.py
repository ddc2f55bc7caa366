"""The request methods that agent state adds to ``kruxos.v1`` (docs/protocol.md, *State*).

A leaf module, so that the protocol core can accept these names without importing the state service.
Everything else about state (get, set, history, briefings) is a capability, invoked like any other.
"""

from __future__ import annotations

STATE_METHODS = frozenset(
    {
        "state.shared.watch",
        "state.shared.unwatch",
        "transaction.begin",
        "transaction.invoke",
        "transaction.commit",
        "transaction.rollback",
    }
)
