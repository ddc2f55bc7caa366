"""Transactions: a failure or an exception undoes every effect inside, byte for byte."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kruxos import (
    Agent,
    AsyncAgent,
    AsyncTransaction,
    CapabilityError,
    ConfigurationError,
    InvalidInput,
    KruxOS,
    transaction,
)

from .state_support import agent, gateway_in_thread, tree_digest
from .support import RunningGateway, eventually, make_config, running_gateway


async def in_transaction(
    a: AsyncAgent, *steps: tuple[str, dict[str, Any]], then: BaseException | None = None
) -> AsyncTransaction:
    """Invoke ``steps`` inside one transaction; raise ``then`` at the end of the block if given."""
    async with transaction(a) as tx:
        for name, inputs in steps:
            await tx.invoke(name, **inputs)
        if then is not None:
            raise then
    return tx


def write_then_fail(a: Agent) -> None:
    with transaction(a) as tx:
        tx.invoke("filesystem.write", path="/workspace/a.txt", content="x")
        tx.invoke("filesystem.read", path="/workspace/missing.txt")


def make_tree(root: Path) -> None:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "a.txt").write_text("alpha\n")
    (root / "docs" / "deep" / "b.bin").write_bytes(bytes(range(256)) * 64)
    (root / "docs" / "link").symlink_to("a.txt")
    (root / "notes.md").write_text("# notes\n")
    (root / "private.txt").write_text("secret")
    os.chmod(root / "private.txt", 0o600)
    past = 1_600_000_000
    os.utime(root / "notes.md", (past, past))


@pytest.mark.asyncio
async def test_a_failing_invocation_restores_a_tree_of_files_exactly(gateway: RunningGateway) -> None:
    make_tree(gateway.workspace)
    before = tree_digest(gateway.workspace)

    async def reorganise(a: AsyncAgent) -> AsyncTransaction:
        async with transaction(a) as tx:
            await tx.invoke("filesystem.write", path="/workspace/notes.md", content="overwritten")
            await tx.invoke("filesystem.write", path="/workspace/private.txt", content="leaked")
            await tx.invoke("filesystem.write", path="/workspace/new/nested/c.txt", content="new")
            await tx.invoke("filesystem.move", src="/workspace/docs/a.txt", dst="/workspace/moved.txt")
            await tx.invoke("filesystem.delete", path="/workspace/docs", recursive=True)
            await tx.invoke("filesystem.mkdir", path="/workspace/empty/dir")
            await tx.invoke("filesystem.read", path="/workspace/does-not-exist")
        return tx

    async with agent(gateway) as a:
        with pytest.raises(CapabilityError) as raised:
            await reorganise(a)
    assert raised.value.type == "not_found"
    assert tree_digest(gateway.workspace) == before


@pytest.mark.asyncio
async def test_an_exception_in_the_block_rolls_back(gateway: RunningGateway) -> None:
    make_tree(gateway.workspace)
    before = tree_digest(gateway.workspace)
    tx: AsyncTransaction | None = None

    async def change_of_mind(a: AsyncAgent) -> None:
        nonlocal tx
        async with transaction(a) as tx:
            await tx.invoke("filesystem.write", path="/workspace/a.txt", content="hello")
            await tx.invoke("filesystem.delete", path="/workspace/notes.md")
            raise RuntimeError("the agent changed its mind")

    async with agent(gateway) as a:
        with pytest.raises(RuntimeError):
            await change_of_mind(a)
    assert tx is not None
    assert tx.status == "rolled_back"
    assert tree_digest(gateway.workspace) == before


@pytest.mark.asyncio
async def test_a_block_that_ends_normally_commits(gateway: RunningGateway) -> None:
    async with agent(gateway) as a, transaction(a) as tx:
        await tx.invoke("filesystem.write", path="/workspace/a.txt", content="hello")
        await tx.invoke("filesystem.write", path="/workspace/b.txt", content="world")
    assert tx.status == "committed"
    assert (gateway.workspace / "a.txt").read_text() + (
        gateway.workspace / "b.txt"
    ).read_text() == "helloworld"
    assert not list((gateway.config.state_dir / "transactions").iterdir())


@pytest.mark.asyncio
async def test_state_writes_are_reverted_on_rollback(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        await a.state.session.set("step", 1)
        await a.state.persistent.set("checkpoint", {"page": 1})
        await a.state.shared.set("shared.k", "before")
        with pytest.raises(RuntimeError):
            await in_transaction(
                a,
                ("state.session.set", {"key": "step", "value": 2}),
                ("state.session.set", {"key": "fresh", "value": True}),
                ("state.persistent.set", {"key": "checkpoint", "value": {"page": 2}}),
                ("state.shared.set", {"key": "shared.k", "value": "during"}),
                ("state.shared.set", {"key": "shared.new", "value": 1, "expected_version": 0}),
                then=RuntimeError("undo it all"),
            )
        assert (await a.state.session.get("step")).value == 1
        assert not (await a.state.session.get("fresh")).found
        checkpoint = await a.state.persistent.get("checkpoint")
        assert (checkpoint.value, checkpoint.version) == ({"page": 1}, 1)
        assert [v.version for v in (await a.state.persistent.history("checkpoint")).versions] == [1]
        assert (await a.state.shared.get("shared.k")).value == "before"
        assert not (await a.state.shared.get("shared.new")).found
        # A reverted version number is never reused.
        assert await a.state.persistent.set("checkpoint", {"page": 3}) == 3


@pytest.mark.asyncio
async def test_a_shared_key_changed_by_another_agent_since_is_not_clobbered(gateway: RunningGateway) -> None:
    tx: AsyncTransaction | None = None

    async def overtaken(a: AsyncAgent, b: AsyncAgent) -> None:
        nonlocal tx
        async with transaction(a) as tx:
            await tx.invoke("state.shared.set", key="contended", value="a's")
            await b.state.shared.set("contended", "b's")
            raise RuntimeError("roll back")

    async with agent(gateway) as a, agent(gateway) as b:
        with pytest.raises(RuntimeError):
            await overtaken(a, b)
        assert (await a.state.shared.get("contended")).value == "b's"
    assert tx is not None
    assert "changed by someone else" in tx.problems[0]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("capability", "inputs"),
    [
        ("process.run", {"command": "true"}),
        ("network.http_request", {"url": "http://127.0.0.1:9/"}),
        ("alerts.send", {"severity": "info", "title": "t", "message": "m"}),
    ],
    ids=["process", "network", "alerts"],
)
async def test_a_capability_that_cannot_be_undone_is_refused_and_rolls_back(
    gateway: RunningGateway, capability: str, inputs: dict[str, str]
) -> None:
    async with agent(gateway) as a:
        with pytest.raises(CapabilityError) as raised:
            await in_transaction(
                a, ("filesystem.write", {"path": "/workspace/a.txt", "content": "x"}), (capability, inputs)
            )
    assert raised.value.type == "not_transactional"
    assert raised.value.recovery[0].action == "run_outside_transaction"
    assert not (gateway.workspace / "a.txt").exists()


@pytest.mark.asyncio
async def test_read_only_capabilities_may_run_inside_a_transaction(gateway: RunningGateway) -> None:
    (gateway.workspace / "a.txt").write_text("hi")
    async with agent(gateway) as a, transaction(a) as tx:
        result = await tx.invoke("filesystem.read", path="/workspace/a.txt")
    assert result.data["content"] == "hi"


@pytest.mark.asyncio
async def test_invalid_input_inside_a_transaction_raises_and_rolls_back(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        with pytest.raises(InvalidInput):
            await in_transaction(
                a,
                ("filesystem.write", {"path": "/workspace/a.txt", "content": "x"}),
                ("filesystem.write", {"path": 42, "content": "x"}),
            )
    assert not (gateway.workspace / "a.txt").exists()


@pytest.mark.asyncio
async def test_an_ended_transaction_cannot_be_used(gateway: RunningGateway) -> None:
    async with agent(gateway) as a:
        async with transaction(a) as tx:
            pass
        with pytest.raises(ConfigurationError):
            await tx.invoke("filesystem.read", path="/workspace/README.md")


@pytest.mark.asyncio
async def test_a_connection_that_drops_mid_transaction_is_rolled_back(gateway: RunningGateway) -> None:
    make_tree(gateway.workspace)
    before = tree_digest(gateway.workspace)
    async with agent(gateway) as a:
        tx = await transaction(a).__aenter__()
        await tx.invoke("filesystem.write", path="/workspace/notes.md", content="half done")
        await tx.invoke("filesystem.delete", path="/workspace/docs", recursive=True)
    # The connection closed without a commit.
    await eventually(lambda: not gateway.parts.state.transactions._open)
    assert tree_digest(gateway.workspace) == before


def test_the_sync_agent_has_transactions_too(tmp_path: Path) -> None:
    with gateway_in_thread(tmp_path) as (address, key), KruxOS.connect(address, api_key=key) as a:
        with pytest.raises(CapabilityError):
            write_then_fail(a)
        assert not (tmp_path / "workspace" / "a.txt").exists()
        with transaction(a) as tx:
            tx.invoke("filesystem.write", path="/workspace/a.txt", content="x")
        assert tx.status == "committed"
        assert (tmp_path / "workspace" / "a.txt").read_text() == "x"


@pytest.mark.asyncio
async def test_a_change_too_large_to_snapshot_is_refused_and_rolls_back(tmp_path: Path) -> None:
    config = make_config(tmp_path, state={"max_transaction_snapshot_bytes": 1000})
    (tmp_path / "workspace" / "big").mkdir()
    (tmp_path / "workspace" / "big" / "data.bin").write_bytes(b"x" * 2000)
    async with running_gateway(config) as gw, agent(gw) as a:
        with pytest.raises(CapabilityError) as raised:
            await in_transaction(
                a,
                ("filesystem.write", {"path": "/workspace/a.txt", "content": "x"}),
                ("filesystem.delete", {"path": "/workspace/big", "recursive": True}),
            )
    assert raised.value.type == "not_transactional"
    assert "2000 bytes" in raised.value.message
    assert (tmp_path / "workspace" / "big" / "data.bin").stat().st_size == 2000
    assert not (tmp_path / "workspace" / "a.txt").exists()


@pytest.mark.asyncio
async def test_a_tree_holding_a_fifo_is_refused_instead_of_blocking_the_snapshot(
    gateway: RunningGateway,
) -> None:
    (gateway.workspace / "pipes").mkdir()
    os.mkfifo(gateway.workspace / "pipes" / "fifo")
    async with agent(gateway) as a:
        with pytest.raises(CapabilityError) as raised:
            await in_transaction(a, ("filesystem.delete", {"path": "/workspace/pipes", "recursive": True}))
    assert raised.value.type == "not_transactional"
    assert (gateway.workspace / "pipes" / "fifo").exists()
