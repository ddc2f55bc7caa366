#!/usr/bin/env python3
"""Build, render, boot or clean the KruxOS appliance image. See docs/image.md, or ./build.py --help."""

import sys

if __name__ == "__main__":
    from kruxos_build.bootstrap import ensure_tools_python

    ensure_tools_python()  # re-executes under .venv-img when jinja2/pydantic/yaml are missing here

    from kruxos_build.cli import main

    sys.exit(main(sys.argv[1:]))
