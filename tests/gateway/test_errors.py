"""The gateway's errors are one tree: a class per wire type, every class drawn in the module docstring."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from kruxos_gateway import errors

PACKAGE = Path(errors.__file__).parent
CLASSES = sorted(
    (c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__),
    key=lambda c: c.__name__,
)
WIRE = [c for c in CLASSES if issubclass(c, errors.GatewayError)]
# The two branches a wire type can be on; their own type would be a placeholder.
BRANCHES = (errors.GatewayError, errors.ProtocolError, errors.CapabilityFailed)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_is_drawn_in_the_tree_of_the_module_docstring(cls: type) -> None:
    assert errors.__doc__ is not None
    assert f" {cls.__name__} " in errors.__doc__


@pytest.mark.parametrize("cls", [c for c in WIRE if c not in BRANCHES], ids=lambda c: c.__name__)
def test_every_wire_error_class_carries_its_own_type(cls: type[errors.GatewayError]) -> None:
    assert "error_type" in vars(cls)
    assert errors.__doc__ is not None
    assert re.search(rf" {cls.__name__} +{cls.error_type}\b", errors.__doc__)


def test_a_failed_result_type_has_one_class() -> None:
    failed = [c for c in WIRE if issubclass(c, errors.CapabilityFailed) and c is not errors.CapabilityFailed]
    types = [c.error_type for c in failed]
    assert len(types) == len(set(types))


def _direct_constructions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name in {b.__name__ for b in BRANCHES}:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {name}(...)")
    return found


def test_the_gateway_raises_subclasses_never_a_branch_itself() -> None:
    """A branch has no wire type of its own: every error the gateway makes names its type by class."""
    found = [line for path in sorted(PACKAGE.rglob("*.py")) for line in _direct_constructions(path)]
    assert not found, "\n".join(found)
