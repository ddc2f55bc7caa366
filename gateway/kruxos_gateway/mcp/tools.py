"""Capabilities as MCP tools: names, descriptions, JSON Schemas and annotations.

A tool is a capability seen through MCP (``tools/list``): its name without dots (``filesystem.read``
is ``filesystem_read``; clients prefix names, e.g. ``mcp__kruxos__``, and many cap the whole at 64
characters), its description from ``purpose`` and ``when_to_use``, an ``inputSchema`` from its typed
inputs, an ``outputSchema`` from its declared outputs, and annotations from its permission tier.
Names map back through a table, never by replacing characters: ``network_http_request`` is not
``network.http.request``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..core.models import CapabilityDefinition, InputSpec, OutputSpec

__all__ = ["MAX_TOOL_NAME", "WAIT_TOOL", "Tool", "ToolTable", "tool_name"]

# Claude Code's prefix (mcp__<server>__) leaves 64 - 13 characters with the server named "kruxos".
MAX_TOOL_NAME = 51
WAIT_TOOL = "kruxos_wait_for_approval"

_JSON_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "object": {"type": "object"},
    "array": {"type": "array"},
    "string_or_array": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "any": {},
}


# What each permission tier tells a client about a tool (MCP ToolAnnotations; hints, not promises:
# the policy decides). Read-only tools change nothing; network and execute reach beyond the device.
def _hints(read_only: bool, destructive: bool, idempotent: bool, open_world: bool) -> dict[str, bool]:
    return {
        "readOnlyHint": read_only,
        "destructiveHint": destructive,
        "idempotentHint": idempotent,
        "openWorldHint": open_world,
    }


_ANNOTATIONS: dict[str, dict[str, bool]] = {
    "read": _hints(read_only=True, destructive=False, idempotent=True, open_world=False),
    "write": _hints(read_only=False, destructive=False, idempotent=False, open_world=False),
    "execute": _hints(read_only=False, destructive=True, idempotent=False, open_world=True),
    "network": _hints(read_only=False, destructive=True, idempotent=False, open_world=True),
    "notify": _hints(read_only=False, destructive=False, idempotent=False, open_world=True),
    "admin": _hints(read_only=False, destructive=True, idempotent=False, open_world=False),
}


def tool_name(capability: str) -> str:
    return capability.replace(".", "_")


@dataclass(frozen=True)
class Tool:
    name: str
    capability: str  # the capability's name ("" for the gateway's own tools)
    wire: dict[str, Any]  # the Tool object of tools/list


def capability_tool(definition: CapabilityDefinition) -> Tool:
    name = tool_name(definition.name)
    if len(name) > MAX_TOOL_NAME:
        raise ValueError(f"tool name {name!r} is longer than {MAX_TOOL_NAME} characters")
    annotations = dict(_ANNOTATIONS[definition.permission_tier])
    if "destructive" in definition.tags:
        annotations["destructiveHint"] = True
    wire: dict[str, Any] = {
        "name": name,
        "title": definition.name,
        "description": f"{definition.purpose} {definition.when_to_use}",
        "inputSchema": input_schema(definition.inputs),
        "annotations": {"title": definition.name, **annotations},
    }
    if definition.outputs:
        wire["outputSchema"] = output_schema(definition.outputs)
    return Tool(name, definition.name, wire)


def input_schema(inputs: Iterable[InputSpec]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required = []
    for spec in inputs:
        member: dict[str, Any] = {**_JSON_TYPES[spec.type], "description": spec.description}
        if spec.choices is not None:
            member["enum"] = list(spec.choices)
        if spec.required:
            required.append(spec.name)
        elif spec.default is not None:
            member["default"] = spec.default
        properties[spec.name] = member
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def output_schema(outputs: Iterable[OutputSpec]) -> dict[str, Any]:
    """What ``structuredContent`` holds. Clients validate results against it, so it promises only
    what every result keeps: the declared members, each of its type or null, none required."""
    properties: dict[str, Any] = {}
    for spec in outputs:
        base = _JSON_TYPES.get(spec.type, {})
        if "type" in base:
            schema: dict[str, Any] = {"type": [base["type"], "null"]}
        else:
            schema = {}
        properties[spec.name] = {**schema, "description": spec.description}
    return {"type": "object", "properties": properties}


WAIT_TOOL_WIRE: dict[str, Any] = {
    "name": WAIT_TOOL,
    "title": "Wait for an approval",
    "description": (
        "Wait until a person approves or rejects a tool call that needed approval, then return that "
        "call's real result. Use it with the approval_id a call returned; it never runs the call again."
    ),
    "inputSchema": {
        "type": "object",
        "properties": {
            "approval_id": {"type": "string", "description": "The approval_id the call returned."},
            "timeout_seconds": {
                "type": "number",
                "description": "How long to wait at most (default 60, at most 300).",
                "default": 60,
            },
        },
        "required": ["approval_id"],
        "additionalProperties": False,
    },
    "annotations": {
        "title": "Wait for an approval",
        "readOnlyHint": True,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": False,
    },
}


class ToolTable:
    """Tools by name: every capability of the registry, and the gateway's own wait tool."""

    def __init__(self, definitions: Iterable[CapabilityDefinition]) -> None:
        self._by_name: dict[str, Tool] = {}
        for definition in definitions:
            tool = capability_tool(definition)
            if tool.name in self._by_name:
                raise ValueError(f"two capabilities map to the tool name {tool.name!r}")
            self._by_name[tool.name] = tool
        self._by_name[WAIT_TOOL] = Tool(WAIT_TOOL, "", WAIT_TOOL_WIRE)

    def get(self, name: str) -> Tool | None:
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._by_name.values())
