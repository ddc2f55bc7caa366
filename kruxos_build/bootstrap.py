"""Standard library only: make sure build.py runs under a Python that has its dependencies.

If jinja2, pydantic (2.x) or yaml is missing, re-execute under .venv-img, creating it first (python3 -m venv,
pip install -r kruxos_build/requirements.txt). Debian 12's python3-pydantic is 1.x, hence the venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import error_line

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-img"
REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
# Debian's own interpreter: the builder supports the hosts' python3 (3.11 on Debian 12, 3.13 on 13).
SYSTEM_PYTHON = "/usr/bin/python3"


def _have_dependencies() -> bool:
    try:
        import jinja2  # noqa: F401
        import pydantic
        import yaml  # noqa: F401
    except ImportError:
        return False
    return pydantic.VERSION.startswith("2.")


def _fail(message: str, hint: str) -> None:
    print(error_line("build.py", message, hint), file=sys.stderr)
    sys.exit(1)


def ensure_tools_python() -> None:
    if _have_dependencies():
        return
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        _fail(f"{VENV} lacks the builder's dependencies", f"{python} -m pip install -r {REQUIREMENTS}")
    if not python.exists():
        _ensure_venv_module()
        print(f"build.py: creating {VENV} for the builder's dependencies", file=sys.stderr)
        try:
            subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
        except (OSError, subprocess.CalledProcessError):
            shutil.rmtree(VENV, ignore_errors=True)  # half-made: the next run starts again
            _fail(f"cannot create {VENV}", "check that pip can reach PyPI, then run build.py again")
    os.execv(python, [str(python), *sys.argv])


def _ensure_venv_module() -> None:
    """Debian splits venv (and ensurepip) into python3-venv: install it as root, or say how."""
    if subprocess.run([SYSTEM_PYTHON, "-c", "import ensurepip, venv"], capture_output=True).returncode == 0:
        return
    if os.geteuid() != 0:
        _fail("python3-venv is not installed", "run as root, or: sudo apt-get install python3-venv")
    print("build.py: installing python3-venv", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "python3-venv"]):
        if subprocess.run(command, env=env).returncode != 0:
            _fail("cannot install python3-venv", "check the apt sources, then run build.py again")
