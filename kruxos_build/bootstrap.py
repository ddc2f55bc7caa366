"""Standard library only: make sure build.py runs under a Python that has its dependencies.

If jinja2, pydantic (2.x) or yaml is missing, re-execute under .venv-img, creating it first (python3 -m venv,
pip install -r kruxos_build/requirements.txt). Debian 12's python3-pydantic is 1.x, hence the venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-img"
REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"


def _have_dependencies() -> bool:
    try:
        import jinja2  # noqa: F401
        import pydantic
        import yaml  # noqa: F401
    except ImportError:
        return False
    return pydantic.VERSION.startswith("2.")


def _fail(message: str, hint: str) -> None:
    print(f"build.py: {message}\n  hint: {hint}", file=sys.stderr)
    sys.exit(1)


def ensure_tools_python() -> None:
    if _have_dependencies():
        return
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        _fail(f"{VENV} lacks the builder's dependencies", f"{python} -m pip install -r {REQUIREMENTS}")
    if not python.exists():
        print(f"build.py: creating {VENV} for the builder's dependencies", file=sys.stderr)
        try:
            subprocess.run(["/usr/bin/python3", "-m", "venv", str(VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
        except (OSError, subprocess.CalledProcessError):
            _fail(f"cannot create {VENV}", "apt-get install python3-venv (as root), then run build.py again")
    os.execv(python, [str(python), *sys.argv])
