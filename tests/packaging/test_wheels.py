"""The two shippable packages build into wheels that hold every module they have."""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    pytest.param("gateway", "kruxos_gateway", id="gateway"),
    pytest.param("sdk/python", "kruxos", id="sdk"),
]


def _source_modules(source: Path, package: str) -> set[str]:
    """Every module of ``package`` in the repository (what the wheel must hold)."""
    found = {package}
    for module in pkgutil.walk_packages([str(source / package)], prefix=f"{package}."):
        found.add(module.name)
    return found


@pytest.mark.parametrize(("project", "package"), PACKAGES)
def test_the_wheel_holds_and_imports_every_module(tmp_path: Path, project: str, package: str) -> None:
    wheels, target, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # Built from a copy: an in-tree build leaves build/ and *.egg-info/ in the repository.
    shutil.copytree(
        ROOT / project, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # No build isolation and no index: the wheel is built with this environment's setuptools, offline.
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, source],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", target, wheel], check=True)
    expected = _source_modules(ROOT / project, package)
    # Imported from the installed wheel only (PYTHONPATH comes before this environment's editable
    # install), each module checked to come from there.
    program = (
        "import importlib, sys\n"
        f"target = {str(target)!r}\n"
        "for name in sys.argv[1:]:\n"
        "    module = importlib.import_module(name)\n"
        "    assert module.__file__.startswith(target), (name, module.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", program, *sorted(expected)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert importlib.util.find_spec(package) is not None
