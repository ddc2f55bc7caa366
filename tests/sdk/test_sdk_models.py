"""The Pydantic models: forward compatible, and failed results cannot pass for data."""

from __future__ import annotations

from typing import Any

import kruxos.models
import pytest
from kruxos.errors import CapabilityError, PolicyDenied
from kruxos.models import CapabilityDefinition, InvocationResult, StateEntry
from pydantic import BaseModel

FAILED: dict[str, Any] = {
    "invocation_id": "inv_2",
    "capability": "filesystem.read",
    "success": False,
    "data": None,
    "error": {
        "type": "not_found",
        "message": "/workspace/data.csv does not exist",
        "recovery": [{"action": "list_directory", "description": "list /workspace"}],
        "rule": None,
        "approval_id": None,
        "details": {},
    },
    "duration_ms": 0.2,
}
SUCCEEDED: dict[str, Any] = FAILED | {"success": True, "data": {"content": "hi"}, "error": None}


@pytest.mark.parametrize("name", kruxos.models.__all__)
def test_every_model_ignores_unknown_fields(name: str) -> None:
    model = getattr(kruxos.models, name)
    assert issubclass(model, BaseModel)
    assert model.model_config.get("extra") == "ignore"


def test_a_successful_result_exposes_its_data() -> None:
    result = InvocationResult.model_validate(SUCCEEDED)
    assert result.success
    assert result.data == {"content": "hi"}
    result.raise_for_error()


def test_reading_data_of_a_failed_result_raises_its_capability_error() -> None:
    result = InvocationResult.model_validate(FAILED)
    with pytest.raises(CapabilityError) as caught:
        _ = result.data
    assert caught.value.type == "not_found"
    assert caught.value.capability == "filesystem.read"
    assert caught.value.recovery[0].action == "list_directory"


def test_a_failed_result_can_be_inspected_without_raising() -> None:
    result = InvocationResult.model_validate(FAILED)
    assert not result.success
    assert result.error is not None
    assert f"{result.error.type}: {result.error.message}" == "not_found: /workspace/data.csv does not exist"


def test_raise_for_error_keeps_the_subclass_for_refusal_types() -> None:
    failed = FAILED | {"error": FAILED["error"] | {"type": "policy_denied", "rule": "r"}}
    with pytest.raises(PolicyDenied):
        InvocationResult.model_validate(failed).raise_for_error()


@pytest.mark.parametrize("payload", [SUCCEEDED, FAILED], ids=["succeeded", "failed"])
def test_model_dump_round_trips_with_the_payload_under_data(payload: dict[str, Any]) -> None:
    result = InvocationResult.model_validate(payload)
    assert result.model_dump() == payload
    assert InvocationResult.model_validate_json(result.model_dump_json()) == result


def test_a_capability_definition_from_a_newer_gateway_still_parses() -> None:
    cap = CapabilityDefinition.model_validate(
        {"name": "x.y", "category": "x", "permission_tier": "superpower", "cost": 3, "inputs": []}
    )
    assert cap.permission_tier == "superpower"
    assert cap.tags == []


def test_models_are_frozen() -> None:
    entry = StateEntry(key="k", value=1, version=1)
    with pytest.raises(ValueError, match="frozen"):
        entry.key = "other"  # type: ignore[misc]
