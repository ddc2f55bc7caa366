"""KruxOS gateway: lets AI agents discover and invoke capabilities over `kruxos.v1` (docs/protocol.md).

Run it with ``python -m kruxos_gateway --config FILE``; manage keys with ``kruxosctl``.
"""

from ._version import PROTOCOL, __version__
from .app import Gateway
from .config import GatewayConfig, load_config
from .server import GatewayServer

__all__ = ["PROTOCOL", "Gateway", "GatewayConfig", "GatewayServer", "__version__", "load_config"]
