"""KruxOS gateway: lets AI agents discover and invoke capabilities over `kruxos.v1` (docs/protocol.md).

Run it with ``python -m kruxos_gateway --config FILE``; manage keys with ``kruxosctl``.

The public names below are imported on first use, not with the package: ``kruxosctl`` (which imports
``kruxos_gateway.ctl``, and so this package) should not pay for the whole gateway, whose models take
a noticeable part of a second to build, tens of seconds on an emulated first boot.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import PROTOCOL, __version__

if TYPE_CHECKING:
    from .config import GatewayConfig, load_config
    from .core.gateway import Gateway
    from .transports.server import GatewayServer

__all__ = ["PROTOCOL", "Gateway", "GatewayConfig", "GatewayServer", "__version__", "load_config"]

_LAZY = {
    "Gateway": ".core.gateway",
    "GatewayConfig": ".config",
    "GatewayServer": ".transports.server",
    "load_config": ".config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
