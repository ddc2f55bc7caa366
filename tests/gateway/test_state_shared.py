"""Shared state: optimistic locking, linearizable writes, and watches that miss nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kruxos import AsyncAgent, CapabilityError, InvalidInput, StateChange, VersionConflict

from .state_support import agent
from .support import RunningGateway, eventually, make_config, running_gateway

pytestmark = pytest.mark.asyncio


async def increment(a: AsyncAgent, key: str) -> int:
    """Read-modify-write with retry, as the guide does it; return the version written."""
    while True:
        entry = await a.state.shared.get(key)
        try:
            return await a.state.shared.set(key, (entry.value or 0) + 1, expected_version=entry.version)
        except VersionConflict:
            continue


async def test_a_missing_shared_key_reads_as_not_found_at_version_zero(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        entry = await a.state.shared.get("counter")
    assert (entry.found, entry.value, entry.version) == (False, None, 0)


async def test_expected_version_zero_creates_only_if_absent(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        assert await a.state.shared.set("lock", "alice", expected_version=0) == 1
        with pytest.raises(VersionConflict) as raised:
            await a.state.shared.set("lock", "bob", expected_version=0)
        entry = await a.state.shared.get("lock")
    assert raised.value.details == {"key": "lock", "expected_version": 0, "current_version": 1}
    assert raised.value.recovery[0].action == "reread_and_retry"
    assert (entry.value, entry.version, entry.updated_by) == ("alice", 1, "alice")


async def test_a_stale_expected_version_is_a_conflict_and_writes_nothing(gateway: RunningGateway) -> None:
    async with agent(gateway) as a, agent(gateway) as b:
        seen = await a.state.shared.get("doc")
        await b.state.shared.set("doc", "b's", expected_version=seen.version)
        with pytest.raises(VersionConflict):
            await a.state.shared.set("doc", "a's", expected_version=seen.version)
        assert (await a.state.shared.get("doc")).value == "b's"


async def test_set_without_expected_version_always_writes_and_returns_the_new_version(
    gateway: RunningGateway,
) -> None:
    async with agent(gateway) as a:
        assert await a.state.shared.set("k", 1) == 1
        assert await a.state.shared.set("k", 2) == 2


async def test_a_deleted_key_reads_as_absent_and_can_be_created_again(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        await a.state.shared.set("k", 1)
        assert await a.state.shared.delete("k", expected_version=1) == 2
        assert not (await a.state.shared.get("k")).found
        assert await a.state.shared.set("k", "again", expected_version=0) == 3


async def test_twenty_agents_incrementing_one_counter_end_at_a_thousand_and_a_watcher_sees_each_version(
    gateway: RunningGateway,
) -> None:
    seen: list[StateChange] = []
    async with agent(gateway) as watcher:
        await watcher.state.shared.watch(prefix="counter", callback=seen.append)

        async def worker() -> None:
            async with agent(gateway) as a:
                for _ in range(50):
                    await increment(a, "counter")

        await asyncio.gather(*(worker() for _ in range(20)))
        assert (await watcher.state.shared.get("counter")).value == 1000
        await eventually(lambda: len(seen) >= 1000, seconds=10)
    assert [c.version for c in seen] == list(range(1, 1001))
    assert [c.value for c in seen] == list(range(1, 1001))
    revisions = [c.revision for c in seen]
    assert revisions == sorted(set(revisions))


async def test_a_watch_sees_only_keys_under_its_prefix(gateway: RunningGateway) -> None:
    seen: list[str] = []
    async with agent(gateway) as a:
        await a.state.shared.watch(prefix="config.", callback=lambda c: seen.append(c.key))
        await a.state.shared.set("other", 1)
        await a.state.shared.set("config.a", 1)
        await a.state.shared.delete("config.a")
        await eventually(lambda: len(seen) == 2)
    assert seen == ["config.a", "config.a"]


async def test_an_async_callback_is_awaited_one_change_at_a_time(gateway: RunningGateway) -> None:
    running, order = 0, []

    async def on_config_change(change: StateChange) -> None:
        nonlocal running
        running += 1
        assert running == 1
        await asyncio.sleep(0)
        order.append(change.value)
        running -= 1

    async with agent(gateway) as a:
        await a.state.shared.watch(prefix="config.", callback=on_config_change)
        for n in range(5):
            await a.state.shared.set("config.n", n)
        await eventually(lambda: len(order) == 5)
    assert order == [0, 1, 2, 3, 4]


async def test_unwatch_stops_the_callbacks(gateway: RunningGateway) -> None:
    seen: list[int] = []
    async with agent(gateway) as a:
        watch = await a.state.shared.watch(prefix="k", callback=lambda c: seen.append(c.version))
        await a.state.shared.set("k", 1)
        await eventually(lambda: seen == [1])
        await a.state.shared.unwatch(watch)
        await a.state.shared.set("k", 2)
        await a.state.shared.set("marker", 1)
        assert (await a.state.shared.get("k")).version == 2
    assert seen == [1]
    assert not gateway.parts.state.hub._subs


async def test_a_watch_resumed_from_its_last_revision_misses_nothing_and_repeats_nothing(
    gateway: RunningGateway,
) -> None:
    first: list[int] = []
    async with agent(gateway) as writer:
        async with agent(gateway) as before:
            old = await before.state.shared.watch(prefix="job.", callback=lambda c: first.append(c.version))
            for n in range(3):
                await writer.state.shared.set("job.progress", n)
            await eventually(lambda: len(first) == 3)
        # The watcher is disconnected ("reconnecting") while these land:
        for n in range(3, 6):
            await writer.state.shared.set("job.progress", n)
        resumed: list[int] = []
        async with agent(gateway) as after:
            await after.state.shared.watch(
                prefix="job.", callback=lambda c: resumed.append(c.version), from_revision=old.last_revision
            )
            await writer.state.shared.set("job.progress", 6)
            await eventually(lambda: len(resumed) == 4)
    assert first == [1, 2, 3]
    assert resumed == [4, 5, 6, 7]


async def test_resuming_from_trimmed_history_fails_clearly_instead_of_hanging(tmp_path: Path) -> None:
    async with running_gateway(make_config(tmp_path, state={"shared_history": 4})) as gw, agent(gw) as a:
        for n in range(10):
            await a.state.shared.set("k", n)
        with pytest.raises(CapabilityError) as raised:
            await a.state.shared.watch(prefix="k", callback=print, from_revision=1)
    assert raised.value.type == "history_trimmed"
    assert raised.value.details["from_revision"] == 1
    assert raised.value.recovery[0].action == "reread_and_watch"


async def test_a_watch_from_a_future_revision_is_invalid_input(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        with pytest.raises(InvalidInput) as raised:
            await a.state.shared.watch(callback=print, from_revision=99)
    assert raised.value.input == "from_revision"


async def test_watches_end_with_their_connection(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        await a.state.shared.watch(prefix="x", callback=print)
        assert gateway.parts.state.hub._subs
    await eventually(lambda: not gateway.parts.state.hub._subs)
