"""The capabilities every gateway offers, whatever else its features add (state, proxies)."""

from __future__ import annotations

from . import alerts, filesystem, network, process
from .base import Capability, Registry


def builtin_capabilities() -> list[Capability]:
    return [*filesystem.CAPABILITIES, *process.CAPABILITIES, *network.CAPABILITIES, *alerts.CAPABILITIES]


def default_registry() -> Registry:
    """The built-in capabilities alone (a gateway's registry adds its features': ``compose.py``)."""
    return Registry(builtin_capabilities())
