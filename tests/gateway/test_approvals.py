"""Approvals in a real (in-process) gateway: bound to the invocation, run once, pushed, expiring."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from kruxos_gateway import compose, serving
from kruxos_gateway.approvals import store as approvals_store
from kruxos_gateway.compose import Parts
from kruxos_gateway.policy.gate import PolicyGate
from kruxos_gateway.policy.rules import parse_policy
from kruxos_gateway.storage import store
from kruxos_gateway.storage.db import Database

from .support import Client, RunningGateway, eventually, make_config, timeout

pytestmark = pytest.mark.asyncio

POLICY = """
version: 1
default: allow
rules:
  - name: deploys-need-a-person
    decision: require_approval
    capability: process.run
    inputs: {command: {regex: 'deploy'}}
    why: deploys change other systems
  - name: no-sudo
    decision: deny
    capability: process.run
    inputs: {command: {regex: '^sudo'}}
    why: never as root
"""


@contextlib.asynccontextmanager
async def policed_gateway(tmp_path: Path, **policy: Any) -> AsyncIterator[tuple[RunningGateway, Parts]]:
    config = make_config(tmp_path, policy={"approval_poll_interval": 0.05, **policy})
    db = Database(config.db_path)
    db.start()
    try:
        key = await db.run(functools.partial(store.create_key, name="alice"))
        parts = compose.build(config, db, parse_policy(POLICY, "test-policy.yaml"))
        await parts.start()
        transports = serving.serve(parts)
        await transports.server.start()
        try:
            yield RunningGateway(transports.server, db, config, key, parts), parts
        finally:
            await transports.shutdown()
            await parts.close()
    finally:
        await db.close()


@pytest_asyncio.fixture
async def policed(tmp_path: Path) -> AsyncIterator[tuple[RunningGateway, Parts]]:
    async with policed_gateway(tmp_path) as pair:
        yield pair


async def approval_required(client: Client, command: str) -> str:
    frame = await client.invoke("process.run", command=command)
    assert frame["type"] == "error", frame
    assert frame["error"]["type"] == "approval_required", frame
    approval_id: str = frame["error"]["approval_id"]
    return approval_id


async def next_event(client: Client, seconds: float = 5.0) -> dict[str, Any]:
    while True:
        frame = await client.recv(seconds)
        if frame["type"] == "event":
            return frame


async def check(client: Client, approval_id: str) -> dict[str, Any]:
    """The approval's status (skipping events pushed meanwhile)."""
    request_id = await client.send_request("approvals.check", {"approval_id": approval_id})
    frame = await client.recv()
    while frame["type"] == "event":
        frame = await client.recv()
    assert (frame["type"], frame["id"]) == ("response", request_id), frame
    approval: dict[str, Any] = frame["result"]["approval"]
    return approval


async def test_a_denied_invocation_names_the_rule(policed: tuple[RunningGateway, Parts]) -> None:
    gw, _ = policed
    async with gw.client() as client:
        frame = await client.invoke("process.run", command="sudo id")
    assert frame["error"]["type"] == "policy_denied"
    assert frame["error"]["rule"] == "no-sudo"
    assert "never as root" in frame["error"]["message"]


async def test_an_approval_is_pending_until_a_person_decides(policed: tuple[RunningGateway, Parts]) -> None:
    gw, _ = policed
    async with gw.client() as client:
        approval_id = await approval_required(client, "echo deploy > deployed")
        status = await check(client, approval_id)
    assert (status["status"], status["resolved"], status["approved"]) == ("pending", False, None)
    assert status["rule"] == "deploys-need-a-person"
    assert not (gw.workspace / "deployed").exists()


async def test_the_same_invocation_reuses_its_pending_approval(
    policed: tuple[RunningGateway, Parts],
) -> None:
    gw, _ = policed
    async with gw.client() as client:
        first = await approval_required(client, "echo deploy")
        again = await approval_required(client, "echo deploy")
        other = await approval_required(client, "echo deploy now")
    assert first == again != other


async def test_an_approved_invocation_runs_once_and_its_result_is_pushed(
    policed: tuple[RunningGateway, Parts],
) -> None:
    gw, gateway = policed
    async with gw.client() as client:
        approval_id = await approval_required(client, "echo deploy >> deployed; echo ran")
        await gateway.approvals.decide(approval_id, approve=True, operator="olivia", reason="looks fine")
        event = await next_event(client)
        status = await check(client, approval_id)
    assert event["event"] == "approval.resolved"
    assert event["data"]["approval_id"] == approval_id
    assert event["data"]["approved"] is True
    assert event["data"]["data"]["stdout"] == "ran\n"
    assert status["status"] == "completed"
    assert status["decided_by"] == "olivia"
    await gateway.approvals.sweep()  # another sweep must not run it again
    assert (gw.workspace / "deployed").read_text() == "deploy\n"


async def test_a_rejection_carries_the_operators_reason(policed: tuple[RunningGateway, Parts]) -> None:
    gw, gateway = policed
    async with gw.client() as client:
        approval_id = await approval_required(client, "echo deploy > deployed")
        await gateway.approvals.decide(
            approval_id, approve=False, operator="olivia", reason="not on a Friday"
        )
        event = await next_event(client)
    assert event["data"]["approved"] is False
    assert event["data"]["status"] == "rejected"
    assert event["data"]["reason"] == "not on a Friday"
    assert not (gw.workspace / "deployed").exists()


async def test_an_approval_expires_as_a_rejection(tmp_path: Path) -> None:
    async with policed_gateway(tmp_path, approval_timeout=0.2) as (gw, _), gw.client() as client:
        approval_id = await approval_required(client, "echo deploy > deployed")
        event = await next_event(client)
        assert event["data"]["approval_id"] == approval_id
        assert (event["data"]["status"], event["data"]["approved"]) == ("expired", False)
        assert "expired" in event["data"]["reason"]
        with pytest.raises(approvals_store.NotPending):
            await gw.db.run(
                functools.partial(
                    approvals_store.decide, approval_id=approval_id, approve=True, operator="o", reason=""
                )
            )
    assert not (gw.workspace / "deployed").exists()


async def test_another_keys_approval_is_refused_as_not_found(policed: tuple[RunningGateway, Parts]) -> None:
    gw, _ = policed
    bob = await gw.create_key("bob")
    async with gw.client() as alice:
        approval_id = await approval_required(alice, "echo deploy")
    async with gw.client(bob) as client:
        theirs = await client.request("approvals.check", {"approval_id": approval_id})
        unknown = await client.request("approvals.check", {"approval_id": "apr_nope"})
    assert theirs["error"]["type"] == unknown["error"]["type"] == "not_found"
    assert theirs["error"]["message"].replace(approval_id, "ID") == unknown["error"]["message"].replace(
        "apr_nope", "ID"
    )


async def test_two_agents_each_get_their_own_approval_pushed(policed: tuple[RunningGateway, Parts]) -> None:
    gw, gateway = policed
    bob = await gw.create_key("bob")
    async with gw.client() as alice, gw.client(bob) as bobs:
        a = await approval_required(alice, "echo deploy alice")
        b = await approval_required(bobs, "echo deploy bob")
        await gateway.approvals.decide(b, approve=True, operator="o", reason="")
        await gateway.approvals.decide(a, approve=False, operator="o", reason="no")
        alice_event, bob_event = await asyncio.gather(next_event(alice), next_event(bobs))
    assert (alice_event["data"]["approval_id"], alice_event["data"]["approved"]) == (a, False)
    assert (bob_event["data"]["approval_id"], bob_event["data"]["data"]["stdout"]) == (b, "deploy bob\n")


async def test_a_decision_written_by_kruxosctl_is_noticed_without_a_signal(
    policed: tuple[RunningGateway, Parts],
) -> None:
    gw, _ = policed
    async with gw.client() as client:
        approval_id = await approval_required(client, "echo deploy")
        conn = store.connect(gw.config.db_path)  # as kruxosctl does: its own connection, no signal
        try:
            with store.transaction(conn):
                approvals_store.decide(conn, approval_id, approve=False, operator="cli", reason="nope")
        finally:
            conn.close()
        event = await next_event(client, seconds=timeout(5))
    assert (event["data"]["status"], event["data"]["reason"]) == ("rejected", "nope")


async def test_every_decision_is_in_the_audit_log(policed: tuple[RunningGateway, Parts]) -> None:
    gw, gateway = policed
    async with gw.client() as client:
        approval_id = await approval_required(client, "echo deploy")
        await gateway.approvals.decide(approval_id, approve=True, operator="olivia", reason="ok")
        await next_event(client)
    await gw.db.flush()
    records = await gw.db.run(functools.partial(store.tail_audit, limit=20))
    decision = [r for r in records if r.invocation_id == approval_id]
    assert [(r.key_name, r.outcome) for r in decision] == [("operator:olivia", "approved")]
    ran = [r for r in records if r.capability == "process.run" and r.outcome == "success"]
    assert len(ran) == 1


async def test_reloading_the_policy_keeps_connections(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("version: 1\ndefault: allow\n")
    async with policed_gateway(tmp_path) as (gw, gateway), gw.client() as client:
        gate = gateway.policy
        assert isinstance(gate, PolicyGate)
        gate.path = policy_file
        gate.reload()
        assert (await client.invoke("process.run", command="sudo true"))["type"] == "response"
        policy_file.write_text("version: 1\ndefault: deny\n")
        gate.reload()
        denied = await client.invoke("process.run", command="true")
        policy_file.write_text("version: 1\ndefault: nope\n")
        gate.reload_logged()  # refused: the previous policy stays in force
        still = await client.invoke("process.run", command="true")
    assert denied["error"]["rule"] == "default"
    assert still["error"]["rule"] == "default"


async def test_a_wait_can_start_after_the_decision(policed: tuple[RunningGateway, Parts]) -> None:
    gw, gateway = policed
    async with gw.client() as client:
        approval_id = await approval_required(client, "echo deploy")
    await gateway.approvals.decide(approval_id, approve=True, operator="o", reason="")
    async with gw.client() as client:
        await eventually(lambda: not gateway.approvals._running)
        status = await check(client, approval_id)
    assert (status["status"], status["data"]["stdout"]) == ("completed", "deploy\n")


async def test_a_deny_added_after_the_request_wins_over_the_approval(
    policed: tuple[RunningGateway, Parts],
) -> None:
    gw, gateway = policed
    async with gw.client() as client:
        approval_id = await approval_required(client, "echo deploy > deployed")
        gate = gateway.policy
        assert isinstance(gate, PolicyGate)
        gate.policy = parse_policy(POLICY + "  - {name: freeze, decision: deny, capability: process.run}\n")
        await gateway.approvals.decide(approval_id, approve=True, operator="olivia", reason="")
        event = await next_event(client)
    assert (event["data"]["status"], event["data"]["approved"], event["data"]["success"]) == (
        "completed",
        True,
        False,
    )
    assert event["data"]["error"]["type"] == "policy_denied"
    assert event["data"]["error"]["rule"] == "freeze"
    assert not (gw.workspace / "deployed").exists()
