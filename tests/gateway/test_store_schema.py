"""The gateway's database schema: created once, and brought up to date from any older version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kruxos_gateway.storage import store


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_a_new_database_has_every_feature_table_at_the_current_version(tmp_path: Path) -> None:
    store.connect(tmp_path / "gateway.db").close()
    names = tables(tmp_path / "gateway.db")
    assert {"keys", "audit", "alerts", "approvals", "state_persistent", "state_shared"} <= names
    conn = sqlite3.connect(tmp_path / "gateway.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    conn.close()


def test_a_version_1_database_gains_the_later_tables_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(f"BEGIN; {store._SCHEMA}; PRAGMA user_version=1; COMMIT;")
    old.execute("INSERT INTO keys (name, key_hash, created_at) VALUES ('alice', 'h', 't')")
    old.close()

    conn = store.connect(path)
    try:
        assert [k.name for k in store.list_keys(conn)] == ["alice"]
    finally:
        conn.close()
    assert {"approvals", "state_persistent", "state_file_events"} <= tables(path)


def test_opening_a_current_database_does_not_wait_for_another_writer(tmp_path: Path) -> None:
    # kruxosctl opens the database while the gateway writes: with the schema current, opening it
    # must not need the write lock (a schema step would wait out the busy timeout, then fail).
    path = tmp_path / "gateway.db"
    store.connect(path).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        conn = store.connect(path)
        assert conn.execute("SELECT count(*) FROM keys").fetchone()[0] == 0
        conn.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
