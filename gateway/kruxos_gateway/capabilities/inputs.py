"""A capability's inputs as one typed model: it declares them to agents and it validates them.

Each capability's inputs are a subclass of :class:`Inputs` (strict pydantic: no coercion, no unknown
names). :func:`declared` derives what ``capabilities.list`` shows from the model's fields (name, type,
required, default, description, choices), and :func:`validate` checks an invocation's inputs with the
model, so what agents are told and what the gateway accepts cannot drift apart. Annotations map to
the protocol's input types::

    str → string      int → integer     int | float → number    bool → boolean
    dict[str, Any] → object             list[Any] → array       str | list[str] → string_or_array
    Any → any         Literal["a", "b"] → string with choices    X | None = default → optional X

``null`` for an optional input means its default. A refusal is ``InvalidInput`` naming the first
offending input (in declaration order) with a fix, in the same words whatever pydantic reports.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticUndefined

from ..core.models import InputSpec, InputType
from ..errors import InvalidInput

__all__ = ["Inputs", "NoInputs", "declared", "json_type", "validate"]


class Inputs(BaseModel):
    """Base of every capability's input model."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoInputs(Inputs):
    """A capability that takes no inputs."""


def declared(model: type[Inputs]) -> list[InputSpec]:
    """The inputs ``model`` declares, as agents see them."""
    specs = []
    for name, field in model.model_fields.items():
        kind, choices = _input_type(model, name, field.annotation)
        required = field.default is PydanticUndefined and field.default_factory is None
        if field.description is None:
            raise TypeError(f"{model.__name__}.{name} has no description: agents are told what each input is")
        specs.append(
            InputSpec(
                name=name,
                type=kind,
                required=required,
                default=None if required else field.get_default(call_default_factory=True),
                description=field.description,
                choices=choices,
            )
        )
    return specs


def _input_type(model: type[Inputs], name: str, annotation: Any) -> tuple[InputType, tuple[str, ...] | None]:
    if annotation is Any:  # not walked by the model: values are bounded by the protocol (depth, size)
        return "any", None
    members = [m for m in _union_members(annotation) if m is not type(None)]
    if len(members) == 1:
        (only,) = members
        if get_origin(only) is Literal:
            values = get_args(only)
            if not all(isinstance(v, str) for v in values):
                raise TypeError(f"{model.__name__}.{name}: choices are strings")
            return "string", tuple(values)
        simple: dict[Any, InputType] = {str: "string", int: "integer", bool: "boolean"}
        if only in simple:
            return simple[only], None
        if get_origin(only) is dict and get_args(only)[0] is str:
            return "object", None
        if get_origin(only) is list:
            return "array", None
    if set(members) == {int, float}:
        return "number", None
    if (
        len(members) == 2
        and str in members
        and any(get_origin(m) is list and get_args(m) == (str,) for m in members)
    ):
        return "string_or_array", None
    raise TypeError(f"{model.__name__}.{name}: annotation {annotation!r} has no kruxos.v1 input type")


def _union_members(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return list(get_args(annotation))
    return [annotation]


def validate(
    capability: str, model: type[Inputs], specs: Sequence[InputSpec], inputs: dict[str, Any]
) -> dict[str, Any]:
    """Check ``inputs`` of ``capability`` with ``model``; return them with defaults filled in."""
    by_name = {s.name: s for s in specs}
    for name in inputs:
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            raise InvalidInput(
                name,
                f"{capability} has no input {name!r}",
                f"remove {name!r}; the inputs of {capability} are: {known}",
            )
    present = {name: value for name, value in inputs.items() if value is not None}
    try:
        valid = model.model_validate(present)
    except ValidationError as exc:
        raise _refusal(exc, specs, present) from None
    return dict(valid)


def _refusal(exc: ValidationError, specs: Sequence[InputSpec], present: dict[str, Any]) -> InvalidInput:
    failing = {str(error["loc"][0]): error["type"] for error in exc.errors() if error["loc"]}
    for spec in specs:  # the first offending input in declaration order, as agents read them
        if spec.name not in failing:
            continue
        if spec.name not in present:
            return InvalidInput(
                spec.name,
                f"missing required input {spec.name!r}",
                f"pass {spec.name} ({_describe_type(spec)}): {spec.description}",
            )
        value = present[spec.name]
        if spec.choices is not None and isinstance(value, str):
            allowed = ", ".join(repr(c) for c in spec.choices)
            return InvalidInput(
                spec.name,
                f"input {spec.name!r} must be one of {allowed}, got {value!r}",
                f"pass {spec.name} as one of {allowed}",
            )
        return InvalidInput(
            spec.name,
            f"input {spec.name!r} must be {_describe_type(spec)}, got {json_type(value)}",
            f"pass {spec.name} as {_describe_type(spec)}, e.g. {_example(spec)}",
        )
    first = exc.errors()[0]  # not tied to one input (a model-level check)
    return InvalidInput("inputs", f"invalid inputs: {first['msg']}", "check the capability's inputs")


_EXAMPLES = {
    "string": '"text"',
    "integer": "42",
    "number": "1.5",
    "boolean": "true",
    "object": '{"key": "value"}',
    "array": '["a", "b"]',
    "string_or_array": '"ls -la" or ["ls", "-la"]',
    "any": '0.85 or {"step": 3}',
}


def json_type(value: object) -> str:
    """The JSON type name of a decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _example(spec: InputSpec) -> str:
    if spec.choices:
        return f'"{spec.choices[0]}"'
    if spec.type == "string" and spec.name in ("path", "src", "dst", "cwd"):
        return '"/workspace/notes.txt"' if spec.name != "cwd" else '"/workspace"'
    return _EXAMPLES[spec.type]


def _describe_type(spec: InputSpec) -> str:
    if spec.type == "string_or_array":
        return "a string or an array of strings"
    if spec.type == "any":
        return "any JSON value except null"
    article = "an" if spec.type[0] in "aeiou" else "a"
    return f"{article} {spec.type}"
