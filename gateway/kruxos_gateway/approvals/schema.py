"""The SQLite tables of approvals: one row per approval, and the operators' decisions on them.

``store.connect`` creates them with the rest of the schema. This module imports nothing, so that the
storage layer can create the tables without depending on the approvals feature that queries them
(``approvals/store.py``).
"""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY,
    approval_id TEXT NOT NULL UNIQUE,
    key_name TEXT NOT NULL,
    session_id TEXT NOT NULL,
    capability TEXT NOT NULL,
    inputs TEXT NOT NULL,
    inputs_sha256 TEXT NOT NULL,
    rule TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    decided_at REAL,
    decided_by TEXT,
    reason TEXT,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    notified INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS approvals_open ON approvals(status, expires_at)
    WHERE status IN ('pending', 'approved', 'running');
CREATE INDEX IF NOT EXISTS approvals_unnotified ON approvals(id) WHERE notified = 0;
CREATE TABLE IF NOT EXISTS approval_decisions (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    approval_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    operator TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""
