"""The composition root: the daemon, the tests and kruxosctl build one gateway the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
from kruxos_gateway import compose
from kruxos_gateway.core.pipeline import Pipeline
from kruxos_gateway.ctl.cli import main as kruxosctl
from kruxos_gateway.policy.rules import parse_policy
from kruxos_gateway.storage.db import Database

from .support import RunningGateway, make_config


@pytest.mark.asyncio
async def test_the_cli_knows_every_capability_the_daemon_serves(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        served = (await client.request("capabilities.list"))["result"]["capabilities"]
    assert [c["name"] for c in served] == [d.name for d in compose.registry(gateway.config).list()]
    assert {"state.shared.set", "state.persistent.get", "filesystem.write"} <= {c["name"] for c in served}


def test_policy_test_decides_for_a_state_capability(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\ndefault: allow\nrules:\n"
        "  - {name: no-shared, decision: deny, capability: state.shared.set}\n"
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nworkspace: {{root: {tmp_path}}}\npolicy: {{file: {policy}}}\n"
    )
    assert kruxosctl(["--config", str(config), "policy", "test", "state.shared.set", "key=x", "value=1"]) == 0
    out = capsys.readouterr().out
    assert "decision: deny" in out
    assert "no-shared" in out


def test_building_a_gateway_touches_nothing_outside_its_objects(tmp_path: Path) -> None:
    """kruxosctl builds the daemon's parts to learn its capabilities, while the daemon may be
    running: building must not delete a transaction's snapshots or create the database."""
    config = make_config(tmp_path)
    leftover = config.state_dir / "transactions" / "tx_running" / "0"
    leftover.mkdir(parents=True)
    compose.build(config, Database(config.db_path), parse_policy("version: 1\ndefault: deny\n"))
    assert leftover.is_dir()
    assert not config.db_path.exists()


@pytest.mark.asyncio
async def test_starting_the_parts_drops_what_a_stopped_gateway_left(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    leftover = config.state_dir / "transactions" / "tx_stopped"
    leftover.mkdir(parents=True)
    db = Database(config.db_path)
    db.start()
    try:
        parts = compose.build(config, db, parse_policy("version: 1\ndefault: allow\n"))
        await parts.start()
        await parts.close()
    finally:
        await db.close()
    assert not leftover.exists()


def test_every_feature_reaches_the_one_pipeline(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    parts = compose.build(config, Database(config.db_path), parse_policy("version: 1\ndefault: deny\n"))
    assert isinstance(parts.pipeline, Pipeline)
    assert parts.approvals.pipeline is parts.pipeline
    assert parts.pipeline.policy is parts.policy
    assert parts.gateway.methods.names >= {
        "ping",
        "capabilities.list",
        "capabilities.describe",
        "capabilities.invoke",
        "approvals.check",
        "state.shared.watch",
        "state.shared.unwatch",
        "transaction.begin",
        "transaction.invoke",
        "transaction.commit",
        "transaction.rollback",
    }
