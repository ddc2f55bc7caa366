"""Session state lives as long as its connection; persistent state is versioned, per key, and durable."""

from __future__ import annotations

from pathlib import Path

import pytest
from kruxos import CapabilityError, InvalidInput, KruxOS

from .state_support import agent, gateway_in_thread
from .support import RunningGateway, make_config, running_gateway


@pytest.mark.asyncio
async def test_session_values_round_trip_and_list_by_prefix(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        assert await a.state.session.set("task.current", {"step": 3, "total": 10}) == 1
        await a.state.session.set("task.next", [1, 2])
        await a.state.session.set("other", "x")
        entry = await a.state.session.get("task.current")
        assert (entry.found, entry.value, entry.version) == (True, {"step": 3, "total": 10}, 1)
        assert await a.state.session.list(prefix="task.") == ["task.current", "task.next"]
        assert await a.state.session.delete("task.current") is True
        assert await a.state.session.delete("task.current") is False


@pytest.mark.asyncio
async def test_a_missing_session_key_is_not_found_rather_than_an_error(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        entry = await a.state.session.get("nothing.here")
    assert (entry.found, entry.value, entry.version) == (False, None, 0)


@pytest.mark.asyncio
async def test_session_state_is_gone_in_the_next_session_and_invisible_to_others(
    gateway: RunningGateway,
) -> None:
    async with agent(gateway) as first, agent(gateway) as concurrent:
        await first.state.session.set("mine", 1)
        assert not (await concurrent.state.session.get("mine")).found
    async with agent(gateway) as later:
        assert not (await later.state.session.get("mine")).found
    assert not gateway.parts.state.sessions._sessions


@pytest.mark.asyncio
async def test_an_overlong_key_is_invalid_input_naming_the_limit(tmp_path: Path) -> None:
    config = make_config(tmp_path, state={"max_key_length": 8})
    async with running_gateway(config) as gw, agent(gw) as a:
        with pytest.raises(InvalidInput) as raised:
            await a.state.session.set("k" * 9, 1)
    assert raised.value.input == "key"
    assert "limit of 8" in raised.value.message


@pytest.mark.asyncio
async def test_an_oversized_value_is_too_large_with_a_recovery(tmp_path: Path) -> None:
    config = make_config(tmp_path, state={"max_value_bytes": 100})
    async with running_gateway(config) as gw, agent(gw) as a:
        with pytest.raises(CapabilityError) as raised:
            await a.state.persistent.set("big", "x" * 200)
    assert raised.value.type == "too_large"
    assert raised.value.details["limit"] == 100
    assert raised.value.recovery


@pytest.mark.asyncio
async def test_a_session_holds_at_most_max_session_keys(tmp_path: Path) -> None:
    config = make_config(tmp_path, state={"max_session_keys": 2})
    async with running_gateway(config) as gw, agent(gw) as a:
        await a.state.session.set("a", 1)
        await a.state.session.set("b", 1)
        await a.state.session.set("a", 2)  # replacing a key is fine
        with pytest.raises(CapabilityError) as raised:
            await a.state.session.set("c", 1)
    assert raised.value.type == "too_large"
    assert raised.value.recovery[0].action == "delete_keys"


@pytest.mark.asyncio
async def test_null_is_not_a_storable_value(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        with pytest.raises(InvalidInput):
            await a.state.session.set("k", None)


@pytest.mark.asyncio
async def test_every_persistent_write_is_a_new_version_readable_by_number(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        assert await a.state.persistent.set("config.threshold", 0.85) == 1
        assert await a.state.persistent.set("config.threshold", 0.9) == 2
        latest = await a.state.persistent.get("config.threshold")
        first = await a.state.persistent.get("config.threshold", version=1)
        missing = await a.state.persistent.get("config.threshold", version=7)
        history = await a.state.persistent.history("config.threshold", limit=5)
    assert (latest.value, latest.version) == (0.9, 2)
    assert (first.value, first.version) == (0.85, 1)
    assert (missing.found, missing.version) == (False, 7)
    assert [(e.version, e.value) for e in history.versions] == [(2, 0.9), (1, 0.85)]
    assert all(e.updated_at is not None for e in history.versions)


@pytest.mark.asyncio
async def test_persistent_state_belongs_to_the_api_key(gateway: RunningGateway) -> None:
    bob_key = await gateway.create_key("bob")
    async with agent(gateway) as alice, agent(gateway, bob_key) as bob:
        await alice.state.persistent.set("plan", "alice's")
        assert not (await bob.state.persistent.get("plan")).found
        assert await alice.state.persistent.list() == ["plan"]
        assert await bob.state.persistent.list() == []


@pytest.mark.asyncio
async def test_persistent_history_keeps_the_configured_number_of_versions(tmp_path: Path) -> None:
    config = make_config(tmp_path, state={"persistent_history": 3})
    async with running_gateway(config) as gw, agent(gw) as a:
        for value in range(6):
            await a.state.persistent.set("k", value)
        history = await a.state.persistent.history("k", limit=10)
        oldest = await a.state.persistent.get("k", version=1)
    assert [e.version for e in history.versions] == [6, 5, 4]
    assert not oldest.found


@pytest.mark.asyncio
async def test_persistent_state_survives_a_gateway_restart_under_the_key_name(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running_gateway(config) as gw, agent(gw) as a:
        await a.state.persistent.set("research.checkpoint", {"page": 4})
        await gw.revoke_key("alice")  # the next gateway gives a new key the same name
    async with running_gateway(config) as gw, agent(gw) as a:
        entry = await a.state.persistent.get("research.checkpoint")
    assert (entry.value, entry.version) == ({"page": 4}, 1)


def test_the_sync_agent_has_the_same_state_api(tmp_path: Path) -> None:
    with gateway_in_thread(tmp_path) as (address, key), KruxOS.connect(address, api_key=key) as a:
        a.state.session.set("s", 1)
        assert a.state.session.get("s").value == 1
        assert a.state.persistent.set("p", "v") >= 1
        assert a.state.persistent.history("p").versions[0].value == "v"
        version = a.state.shared.set("sync.shared", 1, expected_version=0)
        assert a.state.shared.get("sync.shared").version == version
