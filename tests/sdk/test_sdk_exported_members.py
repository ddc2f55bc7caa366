"""The public surface: explicit, sorted, and complete."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import kruxos
import pytest

MODULES = ["kruxos", *(f"kruxos.{m.name}" for m in pkgutil.iter_modules(kruxos.__path__))]


def test_the_package_exports_exactly_its_public_names() -> None:
    public = {name for name in dir(kruxos) if not name.startswith("_")} - {
        m.split(".")[1]
        for m in MODULES[1:]  # submodules appear as attributes once imported
    }
    assert public == set(kruxos.__all__) - {"__version__"}


def isort_order(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then functions."""
    if name.isupper() and len(name) > 1:
        return (0, name)
    return (1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize("module_name", MODULES)
def test_every_module_has_a_sorted_all(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__all__ == sorted(module.__all__, key=isort_order)
    assert all(hasattr(module, name) for name in module.__all__)


@pytest.mark.parametrize("name", [n for n in kruxos.__all__ if n != "__version__"])
def test_public_members_report_kruxos_as_their_home(name: str) -> None:
    assert getattr(kruxos, name).__module__.startswith("kruxos")


def test_the_package_ships_py_typed() -> None:
    assert (Path(kruxos.__file__).parent / "py.typed").is_file()


def test_the_version_is_a_string() -> None:
    assert isinstance(kruxos.__version__, str)
