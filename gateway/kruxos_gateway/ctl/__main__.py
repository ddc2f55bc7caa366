"""``python -m kruxos_gateway.ctl``: the same as ``kruxosctl``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
