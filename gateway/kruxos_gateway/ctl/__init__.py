"""``kruxosctl``, the operator's command line (``cli``), with its approvals commands and output."""

from .cli import main

__all__ = ["main"]
