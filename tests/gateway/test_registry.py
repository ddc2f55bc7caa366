"""The capability registry: definitions, filters, and input validation before anything runs."""

from __future__ import annotations

from typing import Any

import pytest
from kruxos_gateway.capabilities.base import Capability
from kruxos_gateway.capabilities.builtin import default_registry
from kruxos_gateway.errors import InvalidInput, UnknownCapability

REGISTRY = default_registry()
EXPECTED = [
    "alerts.send",
    "filesystem.delete",
    "filesystem.list",
    "filesystem.mkdir",
    "filesystem.move",
    "filesystem.read",
    "filesystem.stat",
    "filesystem.write",
    "network.http_request",
    "process.run",
]


def test_the_built_in_capabilities_are_listed_sorted_by_name() -> None:
    assert [d.name for d in REGISTRY.list()] == EXPECTED


def test_read_only_filesystem_capabilities_are_tagged_safe() -> None:
    assert [d.name for d in REGISTRY.list(tag="safe")] == [
        "filesystem.list",
        "filesystem.read",
        "filesystem.stat",
    ]


def test_category_and_tag_filters_both_apply() -> None:
    assert [d.name for d in REGISTRY.list(category="process", tag="safe")] == []


@pytest.mark.parametrize("name", EXPECTED)
def test_every_definition_is_complete(name: str) -> None:
    definition = REGISTRY.get(name).definition
    assert definition.purpose
    assert definition.when_to_use
    assert definition.outputs
    assert all(i.description for i in definition.inputs)
    assert definition.category == name.split(".")[0]


def test_choices_stay_internal_and_are_not_on_the_wire() -> None:
    wire = REGISTRY.get("filesystem.read").definition.model_dump(mode="json")
    assert set(wire["inputs"][1]) == {"name", "type", "required", "default", "description"}


def test_an_unknown_name_is_unknown_capability() -> None:
    with pytest.raises(UnknownCapability):
        REGISTRY.get("filesystem.teleport")


READ = REGISTRY.get("filesystem.read")
RUN = REGISTRY.get("process.run")


@pytest.mark.parametrize(
    ("capability", "inputs", "bad_input", "message"),
    [
        pytest.param(READ, {}, "path", "missing required input 'path'", id="missing-required"),
        pytest.param(READ, {"path": "a", "mode": "r"}, "mode", "has no input 'mode'", id="unknown-input"),
        pytest.param(READ, {"path": 3}, "path", "must be a string, got integer", id="int-for-string"),
        pytest.param(READ, {"path": True}, "path", "must be a string, got boolean", id="bool-for-string"),
        pytest.param(
            READ, {"path": "a", "encoding": "latin-1"}, "encoding", "must be one of", id="bad-choice"
        ),
        pytest.param(
            RUN, {"command": ["ls", 1]}, "command", "a string or an array of strings", id="mixed-argv"
        ),
        pytest.param(
            RUN,
            {"command": "ls", "timeout": "5"},
            "timeout",
            "must be a number, got string",
            id="string-for-number",
        ),
        pytest.param(RUN, {"command": "ls", "timeout": True}, "timeout", "got boolean", id="bool-for-number"),
        pytest.param(
            RUN, {"command": "ls", "env": []}, "env", "must be an object, got array", id="array-for-object"
        ),
    ],
)
def test_invalid_inputs_name_the_input_and_the_fix(
    capability: Capability, inputs: dict[str, Any], bad_input: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        capability.validate(inputs)
    error = excinfo.value.to_info()
    assert error.type == "invalid_input"
    assert error.details == {"input": bad_input}
    assert message in error.message
    assert error.recovery[0].action == "fix_input"


def test_defaults_are_filled_in_and_null_means_default() -> None:
    assert READ.validate({"path": "a", "encoding": None}) == {"path": "a", "encoding": "utf-8"}


def test_an_integer_is_a_valid_number() -> None:
    assert RUN.validate({"command": "ls", "timeout": 5})["timeout"] == 5
