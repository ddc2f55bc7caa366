"""Every invocation is audited; alerts are stored, logged and returned by id."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3

import pytest
from kruxos_gateway.storage import store

from .support import RunningGateway

pytestmark = pytest.mark.asyncio


async def audit_rows(gateway: RunningGateway) -> list[sqlite3.Row]:
    # Audit records are queued off the answer's path: wait for the queue to be committed first.
    await gateway.db.flush()
    conn = store.connect(gateway.config.db_path)
    try:
        return conn.execute("SELECT * FROM audit ORDER BY id").fetchall()
    finally:
        conn.close()


async def test_each_invocation_is_audited_with_its_outcome(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        await client.data("filesystem.write", path="a.txt", content="x")
        await client.result("filesystem.read", path="missing.txt")
        await client.invoke("filesystem.read", path=1)
        await client.invoke("no.such.capability")
        await client.request("ping")  # not an invocation
    rows = await audit_rows(gateway)
    assert [(r["capability"], r["outcome"]) for r in rows] == [
        ("filesystem.write", "success"),
        ("filesystem.read", "not_found"),
        ("filesystem.read", "invalid_input"),
        ("no.such.capability", "unknown_capability"),
    ]
    assert {r["key_name"] for r in rows} == {"alice"}
    assert all(r["duration_ms"] >= 0 and r["ts"].endswith("Z") for r in rows)


async def test_the_audit_log_keeps_a_digest_of_the_inputs_not_the_inputs(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        await client.data("filesystem.write", path="a.txt", content="top secret")
    (row,) = await audit_rows(gateway)
    canonical = json.dumps({"content": "top secret", "path": "a.txt"}, separators=(",", ":"), sort_keys=True)
    assert row["inputs_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert "top secret" not in json.dumps(dict(row))


async def test_the_invocation_id_in_the_result_is_the_audited_one(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        result = await client.result("filesystem.list")
    (row,) = await audit_rows(gateway)
    assert row["invocation_id"] == result["invocation_id"]
    assert row["session_id"] == client.hello["session_id"]


async def test_an_alert_is_stored_logged_and_returned_by_id(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="kruxos_gateway.alerts"):
        async with gateway.client() as client:
            data = await client.data(
                "alerts.send", severity="warning", title="Research failed", message="page 3"
            )
    assert data["alert_id"].startswith("alt_")
    conn = store.connect(gateway.config.db_path)
    try:
        (alert,) = store.list_alerts(conn, 10)
    finally:
        conn.close()
    assert (alert.alert_id, alert.severity, alert.title, alert.message, alert.key_name) == (
        data["alert_id"],
        "warning",
        "Research failed",
        "page 3",
        "alice",
    )
    assert any(r.levelno == logging.WARNING and data["alert_id"] in r.getMessage() for r in caplog.records)
