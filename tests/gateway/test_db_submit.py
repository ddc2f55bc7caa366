"""Fire-and-forget writes are held briefly on the event loop, then committed in order and never lost."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kruxos_gateway.storage import db as db_module
from kruxos_gateway.storage import store
from kruxos_gateway.storage.db import Database

from .support import eventually


def _record(n: int) -> store.AuditRecord:
    return store.AuditRecord(
        ts=store.now(),
        key_name="k",
        session_id="s",
        invocation_id=f"inv_{n}",
        capability="c",
        inputs_sha256="0" * 64,
        outcome="success",
        duration_ms=0.0,
    )


def _submit(db: Database, n: int) -> None:
    db.submit(functools.partial(store.append_audit, record=_record(n)))


def _committed(path: Path) -> list[str]:
    """The invocation ids on disk, read through a connection of its own (committed rows only)."""
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT invocation_id FROM audit ORDER BY id")]
    finally:
        conn.close()


def _audit_ids(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT invocation_id FROM audit ORDER BY id")]


@pytest.mark.asyncio
async def test_held_writes_reach_the_disk_without_any_other_job(tmp_path: Path) -> None:
    db = Database(tmp_path / "g.db")
    db.start()
    try:
        _submit(db, 1)
        _submit(db, 2)
        await eventually(lambda: _committed(tmp_path / "g.db") == ["inv_1", "inv_2"])
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_an_awaited_job_runs_after_the_writes_submitted_before_it(tmp_path: Path) -> None:
    db = Database(tmp_path / "g.db")
    db.start()
    try:
        _submit(db, 1)
        _submit(db, 2)
        assert await db.run(_audit_ids) == ["inv_1", "inv_2"]
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_close_commits_the_held_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_module, "SUBMIT_DELAY", 3600.0)  # only close() can hand them over
    db = Database(tmp_path / "g.db")
    db.start()
    for n in range(3):
        _submit(db, n)
    await db.close()
    assert _committed(tmp_path / "g.db") == ["inv_0", "inv_1", "inv_2"]


@pytest.mark.asyncio
async def test_flush_commits_the_held_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_module, "SUBMIT_DELAY", 3600.0)
    db = Database(tmp_path / "g.db")
    db.start()
    try:
        _submit(db, 1)
        await db.flush()
        assert _committed(tmp_path / "g.db") == ["inv_1"]
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_a_full_batch_is_handed_over_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_module, "SUBMIT_DELAY", 3600.0)
    db = Database(tmp_path / "g.db")
    db.start()
    try:
        for n in range(db_module.MAX_BATCH):
            _submit(db, n)
        await eventually(lambda: len(_committed(tmp_path / "g.db")) == db_module.MAX_BATCH)
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_a_write_submitted_off_the_event_loop_is_queued_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "SUBMIT_DELAY", 3600.0)
    db = Database(tmp_path / "g.db")
    db.start()
    try:
        thread = threading.Thread(target=_submit, args=(db, 7))
        thread.start()
        await asyncio.to_thread(thread.join)
        await eventually(lambda: _committed(tmp_path / "g.db") == ["inv_7"])
    finally:
        await db.close()


def _event(n: int) -> store.AuditEvent:
    return store.AuditEvent(datetime.now(UTC), "k", "s", f"inv_{n}", "c", {"n": n}, "success", 0.0)


@pytest.mark.asyncio
async def test_rows_submitted_in_a_row_reach_their_writer_together_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "SUBMIT_DELAY", 3600.0)
    calls: list[list[str]] = []

    def writer(conn: sqlite3.Connection, events: Sequence[store.AuditEvent]) -> None:
        calls.append([e.invocation_id for e in events])
        store.append_audit_events(conn, events)

    db = Database(tmp_path / "g.db")
    db.start()
    try:
        db.submit_row(writer, _event(1))
        db.submit_row(writer, _event(2))
        _submit(db, 3)  # a job between rows keeps its place
        db.submit_row(writer, _event(4))
        await db.flush()
        assert calls == [["inv_1", "inv_2"], ["inv_4"]]
        assert _committed(tmp_path / "g.db") == ["inv_1", "inv_2", "inv_3", "inv_4"]
    finally:
        await db.close()


@pytest.mark.asyncio
async def test_audit_events_are_recorded_as_audit_records_with_their_digest(tmp_path: Path) -> None:
    db = Database(tmp_path / "g.db")
    db.start()
    try:
        count = 2 * 120 + 5  # more than one INSERT statement's worth
        for n in range(count):
            db.submit_row(store.append_audit_events, _event(n))
        await db.flush()
        rows = await db.run(
            lambda conn: conn.execute("SELECT invocation_id, inputs_sha256 FROM audit ORDER BY id").fetchall()
        )
    finally:
        await db.close()
    assert [r[0] for r in rows] == [f"inv_{n}" for n in range(count)]
    assert [r[1] for r in rows] == [store.inputs_digest({"n": n}) for n in range(count)]


def test_iso_ms_writes_what_strftime_wrote() -> None:
    start = datetime(1, 1, 1, tzinfo=UTC)
    samples = [start + timedelta(days=d, microseconds=d * 7919) for d in range(0, 3_652_000, 997)]
    samples += [datetime(2026, 11, 27, 14, 30, 0, 123999, tzinfo=UTC), datetime(999, 12, 31, tzinfo=UTC)]
    for when in samples:
        assert store.iso_ms(when) == when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
