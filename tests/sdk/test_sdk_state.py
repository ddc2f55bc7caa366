"""The SDK side of agent state that needs no gateway: watch delivery and state-call parsing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from kruxos import StateChange, VersionConflict, Watch
from kruxos._state import _state_call
from kruxos.models import StateEntry


def change(revision: int, value: Any = None) -> StateChange:
    return StateChange(key="config.k", value=value, version=revision, revision=revision)


async def drained(watch: Watch) -> None:
    """Wait until the watch has called back for every change delivered so far."""
    if watch._runner is not None:
        await watch._runner


@pytest.mark.asyncio
async def test_a_watch_calls_back_in_order_and_drops_revisions_it_already_saw() -> None:
    seen: list[int] = []
    watch = Watch("w1", "config.", lambda c: seen.append(c.revision), from_revision=2)
    for revision in (1, 2, 3, 3, 4):
        watch._deliver(change(revision))
    await drained(watch)
    assert seen == [3, 4]
    assert watch.last_revision == 4


@pytest.mark.asyncio
async def test_an_async_callback_finishes_one_change_before_the_next_starts() -> None:
    log: list[str] = []

    async def slow(c: StateChange) -> None:
        log.append(f"start {c.revision}")
        await asyncio.sleep(0)
        log.append(f"end {c.revision}")

    watch = Watch("w1", "", slow, from_revision=0)
    watch._deliver(change(1))
    watch._deliver(change(2))
    await drained(watch)
    assert log == ["start 1", "end 1", "start 2", "end 2"]


@pytest.mark.asyncio
async def test_a_failing_callback_is_logged_and_the_watch_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []

    def flaky(c: StateChange) -> None:
        if c.revision == 1:
            raise ValueError("boom")
        seen.append(c.revision)

    watch = Watch("w1", "", flaky, from_revision=0)
    with caplog.at_level(logging.ERROR, logger="kruxos"):
        watch._deliver(change(1))
        watch._deliver(change(2))
        await drained(watch)
    assert seen == [2]
    assert "failed on revision 1" in caplog.text


def invocation(success: bool, data: Any = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "invocation_id": "inv_1",
        "capability": "state.shared.set",
        "success": success,
        "data": data,
        "error": error,
        "duration_ms": 0.1,
    }


def test_a_state_call_is_an_invocation_without_the_unset_inputs() -> None:
    call = _state_call("state.shared.set", {"key": "k", "value": 1, "expected_version": None}, dict)
    assert call.method == "capabilities.invoke"
    assert call.params == {"name": "state.shared.set", "inputs": {"key": "k", "value": 1}}


def test_a_state_call_parses_the_invocations_data() -> None:
    call = _state_call("state.session.get", {"key": "k"}, StateEntry.model_validate)
    entry = call.parse(invocation(True, {"key": "k", "found": False, "value": None, "version": 0}))
    assert (entry.found, entry.version) == (False, 0)


def test_a_version_conflict_result_raises_version_conflict() -> None:
    call = _state_call("state.shared.set", {"key": "k", "value": 1}, dict)
    error = {"type": "version_conflict", "message": "stale", "details": {"current_version": 3}}
    with pytest.raises(VersionConflict) as raised:
        call.parse(invocation(False, error=error))
    assert raised.value.details["current_version"] == 3
    assert raised.value.capability == "state.shared.set"
