"""The capabilities every gateway offers, whatever else its features add (state, proxies)."""

from __future__ import annotations

from . import alerts, filesystem, network, process
from ._fs_client import FileWork, InProcessFiles
from .base import Capability, Registry


def builtin_capabilities(files: FileWork | None = None) -> list[Capability]:
    """The built-in capabilities, ``filesystem.*`` doing their work through ``files`` (by default in
    the gateway's own threads; ``compose.build`` chooses)."""
    return [
        *filesystem.capabilities(files or InProcessFiles()),
        *process.CAPABILITIES,
        *network.CAPABILITIES,
        *alerts.CAPABILITIES,
    ]


def default_registry() -> Registry:
    """The built-in capabilities alone (a gateway's registry adds its features': ``compose.py``)."""
    return Registry(builtin_capabilities())
