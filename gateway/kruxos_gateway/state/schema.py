"""The SQLite tables of agent state.

``store.connect`` creates them with the rest of the schema; they live beside the keys, audit log and
alerts in ``state_dir/gateway.db`` so that one group commit covers a state write and its audit record.
"""

from __future__ import annotations

SCHEMA = """
-- Persistent state: one row per version of (owner, key); owner is the API key's name.
-- A version undone by a transaction rollback is kept (reverted = 1) so its number is never reused.
CREATE TABLE IF NOT EXISTS state_persistent (
    owner TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    session_id TEXT NOT NULL,
    reverted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, key, version)
) WITHOUT ROWID;
-- Shared state: the current value of every key (deleted keys are tombstones that keep their version).
CREATE TABLE IF NOT EXISTS state_shared (
    key TEXT PRIMARY KEY,
    value TEXT,
    version INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
) WITHOUT ROWID;
-- Every shared change, numbered by one global revision (AUTOINCREMENT: never reused, even after the
-- oldest rows are trimmed). Watches replay from here after a reconnect.
CREATE TABLE IF NOT EXISTS state_shared_log (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    value TEXT,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS state_shared_log_key ON state_shared_log(key, version);
CREATE INDEX IF NOT EXISTS state_shared_log_by ON state_shared_log(updated_by, key);
-- Prefixes each key has watched (for briefings).
CREATE TABLE IF NOT EXISTS state_watch_prefixes (
    owner TEXT NOT NULL,
    prefix TEXT NOT NULL,
    watched_at TEXT NOT NULL,
    PRIMARY KEY (owner, prefix)
) WITHOUT ROWID;
-- Ended sessions (for briefings: "since your last session ended").
CREATE TABLE IF NOT EXISTS state_sessions (
    session_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    closed_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS state_sessions_owner ON state_sessions(owner, closed_at);
-- Workspace paths changed by filesystem capabilities (the audit log keeps only input digests).
CREATE TABLE IF NOT EXISTS state_file_events (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    owner TEXT NOT NULL,
    session_id TEXT NOT NULL,
    capability TEXT NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS state_file_events_ts ON state_file_events(ts);
"""
