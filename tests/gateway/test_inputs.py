"""A capability's typed input model declares its inputs to agents and validates them: one source."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from kruxos_gateway.capabilities.base import Capability, define
from kruxos_gateway.capabilities.builtin import default_registry
from kruxos_gateway.capabilities.inputs import Inputs, declared
from kruxos_gateway.errors import InvalidInput
from pydantic import Field


class Example(Inputs):
    path: str = Field(description="A path.")
    count: int = Field(3, description="How many.")
    ratio: int | float | None = Field(None, description="A number.")
    flag: bool = Field(False, description="A flag.")
    options: dict[str, Any] | None = Field(None, description="An object.")
    items: list[Any] | None = Field(None, description="An array.")
    command: str | list[str] | None = Field(None, description="A command.")
    value: Any = Field(None, description="Anything.")
    mode: Literal["fast", "slow"] = Field("fast", description="A choice.")


async def _handler(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    return inputs


EXAMPLE = Capability(
    define("test", "example", ["safe"], "An example.", "In tests.", Example, [], "read"), _handler, Example
)


def test_the_model_declares_every_input_with_its_protocol_type() -> None:
    specs = {s.name: s for s in declared(Example)}
    assert {name: s.type for name, s in specs.items()} == {
        "path": "string",
        "count": "integer",
        "ratio": "number",
        "flag": "boolean",
        "options": "object",
        "items": "array",
        "command": "string_or_array",
        "value": "any",
        "mode": "string",
    }
    assert specs["path"].required
    assert not specs["count"].required
    assert specs["count"].default == 3
    assert specs["mode"].choices == ("fast", "slow")
    assert specs["path"].description == "A path."


def test_an_input_without_a_description_cannot_be_declared() -> None:
    class Undescribed(Inputs):
        path: str

    with pytest.raises(TypeError, match="has no description"):
        declared(Undescribed)


def test_a_definition_that_drifted_from_its_model_is_refused() -> None:
    definition = define("test", "drift", [], "p", "w", Example, [], "read")
    stale = definition.model_copy(update={"inputs": definition.inputs[:1]})
    with pytest.raises(TypeError, match="not those Example declares"):
        Capability(stale, _handler, Example)


def test_every_built_in_capability_is_declared_by_its_model() -> None:
    for definition in default_registry().list():
        capability = default_registry().get(definition.name)
        assert capability.definition.inputs == declared(capability.inputs)


@pytest.mark.parametrize(
    ("inputs", "name", "message"),
    [
        pytest.param(
            {"path": "a", "count": "3"}, "count", "must be an integer, got string", id="no-coercion"
        ),
        pytest.param({"path": "a", "count": 2.0}, "count", "must be an integer, got number", id="float-int"),
        pytest.param({"path": "a", "flag": 1}, "flag", "must be a boolean, got integer", id="int-bool"),
        pytest.param({"path": "a", "mode": "warp"}, "mode", "must be one of 'fast', 'slow'", id="choice"),
        pytest.param({"path": "a", "mode": 7}, "mode", "must be a string, got integer", id="choice-type"),
        pytest.param(
            {"path": "a", "command": ["ls", 1]}, "command", "a string or an array of strings", id="argv"
        ),
        pytest.param({"count": 1}, "path", "missing required input 'path'", id="missing"),
        pytest.param({"path": "a", "extra": 1}, "extra", "test.example has no input 'extra'", id="unknown"),
    ],
)
def test_refusals_name_the_input_and_say_what_it_must_be(
    inputs: dict[str, Any], name: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        EXAMPLE.validate(inputs)
    assert refused.value.details == {"input": name}
    assert message in refused.value.message


def test_the_first_offending_input_in_declaration_order_is_named() -> None:
    with pytest.raises(InvalidInput) as refused:
        EXAMPLE.validate({"mode": "warp", "count": "x"})  # path missing too: it comes first
    assert refused.value.details == {"input": "path"}


def test_null_means_the_default_and_numbers_keep_their_type() -> None:
    valid = EXAMPLE.validate({"path": "a", "count": None, "ratio": 5, "value": {"k": [1]}})
    assert valid["count"] == 3
    assert valid["ratio"] == 5
    assert isinstance(valid["ratio"], int)
    assert valid["value"] == {"k": [1]}
    assert valid["mode"] == "fast"
