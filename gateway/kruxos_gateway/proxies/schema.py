"""The SQLite table of the service proxies' write buffer: one row per buffered write.

``store.connect`` creates it with the rest of the schema. This module imports nothing, so that the
storage layer can create the table without depending on the proxies that use it (``buffer.py``).
"""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS proxy_writes (
    id INTEGER PRIMARY KEY,
    write_id TEXT NOT NULL UNIQUE,
    key_name TEXT NOT NULL,
    session_id TEXT NOT NULL,
    proxy TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    message_id TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    buffer_until REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started_at REAL,
    finished_at REAL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS proxy_writes_due ON proxy_writes(next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS proxy_writes_key ON proxy_writes(key_name, id);
"""
