"""The gateway's SQLite schema and queries: API keys, the audit log and alerts.

Plain synchronous functions of a ``sqlite3.Connection``. None of them commits: the caller owns the
transaction. The gateway runs them on its database thread (``db.Database``), which commits them in
batches (group commit); ``kruxosctl`` calls them directly inside :func:`transaction`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from ..approvals import schema as approvals_schema
from ..proxies import schema as proxies_schema
from ..state import schema as state_schema
from ..timestamps import iso_ms

# 1: keys, audit, alerts; 2: approvals and agent state, whose tables their modules hold; 3: the
# service proxies' write buffer.
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    revoked_at TEXT
);
-- A name is unique among live keys; a revoked key's name can be given to a new key.
CREATE UNIQUE INDEX IF NOT EXISTS keys_live_name ON keys(name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    key_name TEXT NOT NULL,
    session_id TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    capability TEXT NOT NULL,
    inputs_sha256 TEXT NOT NULL,
    outcome TEXT NOT NULL,
    duration_ms REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    alert_id TEXT NOT NULL UNIQUE,
    ts TEXT NOT NULL,
    key_name TEXT NOT NULL,
    severity TEXT NOT NULL,
    title TEXT NOT NULL,
    message TEXT NOT NULL
);
"""


class KeyExists(Exception):
    """A live key with that name already exists."""


class KeyNameRetired(Exception):
    """A revoked key had that name: its persistent state and approvals are still filed under it."""


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` and bring its schema up to date."""
    # isolation_level=None: no implicit transactions; callers open them (db.Database, transaction()).
    conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    # WAL lets kruxosctl read while the gateway writes; FULL makes every commit durable on return.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        # Every statement is CREATE ... IF NOT EXISTS: a database of any older version gets what it
        # lacks, and a second process racing this one (kruxosctl beside the gateway at first boot)
        # waits for the write lock, then changes nothing.
        script = ";\n".join(_schema_parts())
        try:
            conn.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return conn


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection to the database at ``path`` (already created by :func:`connect`) that only reads.

    ``db.Database`` reads on these beside its one writer: in WAL mode a reader neither waits for the
    writer nor holds it up, and sees what was committed when its read transaction began.
    """
    conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _schema_parts() -> tuple[str, ...]:
    """The core tables, then those of the features, which keep theirs in leaf modules of their own."""
    return (_SCHEMA, approvals_schema.SCHEMA, state_schema.SCHEMA, proxies_schema.SCHEMA)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed when the block ends, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def now() -> str:
    """The current UTC time as ISO 8601 with milliseconds, e.g. ``2026-11-27T14:30:00.123Z``."""
    return iso_ms(datetime.now(UTC))


# --- API keys -----------------------------------------------------------------------------------


def hash_key(key: str) -> str:
    # Keys are 256 bits from `secrets`, not passwords a person chose: no dictionary or brute-force
    # attack applies, so a fast hash is as strong as bcrypt/argon2 here, and keeps every handshake
    # cheap (a slow KDF per handshake would hand attackers a CPU-exhaustion lever).
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def create_key(conn: sqlite3.Connection, name: str, *, take_over: bool = False) -> str:
    """Create a key named ``name``; return the key itself (only its hash is stored).

    What an agent keeps in the gateway (persistent state, approvals, its sessions' records) is filed
    under its key's name, so a name stays with the first key that had it: a name that a revoked key
    had is ``KeyNameRetired`` unless ``take_over``, the operator's explicit word that the new key
    inherits all of that (a key rotated for the same agent).
    """
    if not take_over:
        retired = conn.execute(
            "SELECT 1 FROM keys WHERE name = ? AND revoked_at IS NOT NULL LIMIT 1", (name,)
        ).fetchone()
        if retired is not None:
            raise KeyNameRetired(name)
    key = secrets.token_hex(32)
    try:
        conn.execute(
            "INSERT INTO keys (name, key_hash, created_at) VALUES (?, ?, ?)", (name, hash_key(key), now())
        )
    except sqlite3.IntegrityError:
        raise KeyExists(name) from None
    return key


@dataclass(frozen=True)
class KeyRecord:
    name: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None


def list_keys(conn: sqlite3.Connection) -> list[KeyRecord]:
    rows = conn.execute("SELECT name, created_at, last_used_at, revoked_at FROM keys ORDER BY id").fetchall()
    return [KeyRecord(r["name"], r["created_at"], r["last_used_at"], r["revoked_at"]) for r in rows]


def key_number(conn: sqlite3.Connection, name: str) -> int:
    """A number that stays with a key's name (its first row's id): ``process.run`` derives a uid from it."""
    row = conn.execute("SELECT MIN(id) AS first FROM keys WHERE name = ?", (name,)).fetchone()
    if row is None or row["first"] is None:
        raise KeyError(name)
    return int(row["first"])


def rotate_key(conn: sqlite3.Connection, name: str) -> str | None:
    """Replace the live key ``name`` by a new one that keeps its state; ``None`` if there is none."""
    if not revoke_key(conn, name):
        return None
    return create_key(conn, name, take_over=True)


def revoke_key(conn: sqlite3.Connection, name: str) -> bool:
    """Revoke the live key named ``name``; return whether there was one."""
    cursor = conn.execute(
        "UPDATE keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (now(), name)
    )
    return cursor.rowcount > 0


class LiveKey(NamedTuple):
    """The key a connection authenticated with: its row (names can be reused once revoked) and name."""

    id: int
    name: str


def find_key(conn: sqlite3.Connection, key: str) -> LiveKey | None:
    """The live key ``key``; ``None`` if unknown or revoked. Only reads (the gateway's handshake)."""
    digest = hash_key(key)
    row = conn.execute(
        "SELECT id, name, key_hash, revoked_at FROM keys WHERE key_hash = ?", (digest,)
    ).fetchone()
    if row is None or row["revoked_at"] is not None or not hmac.compare_digest(row["key_hash"], digest):
        return None
    return LiveKey(int(row["id"]), str(row["name"]))


def record_key_uses(conn: sqlite3.Connection, uses: Sequence[tuple[int, str]]) -> None:
    """Record that the keys ``(id, when)`` were used (``last_used_at``), the newest time winning.

    The gateway submits one row per handshake without waiting (``db.Database.submit_row``): rows of
    handshakes close together are written by one job, off the handshake's path.
    """
    conn.executemany(
        "UPDATE keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
        [(when, key_id, when) for key_id, when in uses],
    )


def authenticate(conn: sqlite3.Connection, key: str) -> LiveKey | None:
    """The live key ``key``, recording its use; ``None`` if unknown or revoked."""
    found = find_key(conn, key)
    if found is not None:
        record_key_uses(conn, [(found.id, now())])
    return found


# How often the gateway checks its open connections' keys even without a SIGUSR1 from `kruxosctl keys
# revoke` (one indexed query): a revoked key's connections are closed within this many seconds.
REVOCATION_CHECK_INTERVAL = 5.0
# SQLite's default limit on a statement's parameters is 32766 (999 before 3.32); stay well below.
_IDS_PER_QUERY = 500


def revoked_among(conn: sqlite3.Connection, key_ids: Iterable[int]) -> set[int]:
    """Which of the keys ``key_ids`` (those of open connections) have been revoked."""
    ids = sorted(set(key_ids))
    revoked: set[int] = set()
    for start in range(0, len(ids), _IDS_PER_QUERY):
        chunk = ids[start : start + _IDS_PER_QUERY]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT id FROM keys WHERE revoked_at IS NOT NULL AND id IN ({marks})", chunk)
        revoked.update(int(r["id"]) for r in rows)
    return revoked


# --- audit --------------------------------------------------------------------------------------


# What json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str) uses, built once.
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def inputs_digest(inputs: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the inputs (sorted keys, no spaces, UTF-8).

    A lone surrogate (``"\\ud800"`` is valid JSON, and Python decodes it) has no UTF-8 form: it is
    written as its JSON escape, ``\\ud800``, which decodes back to the same string, so every input
    an agent can send has a digest, and any other text keeps the digest it always had.
    """
    canonical = _CANONICAL_JSON.encode(inputs)
    return hashlib.sha256(canonical.encode("utf-8", errors="backslashreplace")).hexdigest()


def storable_text(text: str) -> str:
    """``text`` as SQLite can store it: lone surrogates, which have no UTF-8 form, as ``\\uXXXX`` text."""
    if text.isascii():  # the common case, checked without encoding
        return text
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class AuditRecord:
    ts: str
    key_name: str
    session_id: str
    invocation_id: str
    capability: str
    inputs_sha256: str
    outcome: str  # "success" or the error type
    duration_ms: float
    id: int | None = None


class AuditEvent(NamedTuple):
    """An invocation to audit, as the event loop knows it: the record is made from it later, in bulk."""

    when: datetime
    key_name: str
    session_id: str
    invocation_id: str
    capability: str
    inputs: dict[str, Any]
    outcome: str
    duration_ms: float


# Rows per INSERT statement: 8 parameters each stays under SQLite's oldest limit of 999 per statement.
_AUDIT_ROWS_PER_STATEMENT = 120


def _insert_audit_rows(conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """Insert audit rows (the columns of AuditRecord, in order), one statement per 120 rows."""
    for start in range(0, len(rows), _AUDIT_ROWS_PER_STATEMENT):
        chunk = rows[start : start + _AUDIT_ROWS_PER_STATEMENT]
        conn.execute(
            "INSERT INTO audit (ts, key_name, session_id, invocation_id, capability, inputs_sha256, outcome,"
            " duration_ms) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
            [value for row in chunk for value in row],
        )


def append_audit_events(conn: sqlite3.Connection, events: Sequence[AuditEvent]) -> None:
    """Append the audit records of ``events``, their timestamps and input digests made here, with one
    INSERT statement per 120 records (one trip into SQLite instead of one per record; see db.py, Rows).

    Every record is storable whatever the agent sent: the digest and the capability name (the text
    an agent chose) cannot fail to encode. Should a statement fail anyway, db.py writes the rows of
    the batch one by one, so that the failure costs only the record that caused it.
    """
    _insert_audit_rows(
        conn,
        [
            (
                iso_ms(e.when),
                e.key_name,
                e.session_id,
                e.invocation_id,
                storable_text(e.capability),
                inputs_digest(e.inputs),
                e.outcome,
                e.duration_ms,
            )
            for e in events
        ],
    )


def append_audit(conn: sqlite3.Connection, record: AuditRecord) -> None:
    _insert_audit_rows(
        conn,
        [
            (
                record.ts,
                record.key_name,
                record.session_id,
                record.invocation_id,
                storable_text(record.capability),
                record.inputs_sha256,
                record.outcome,
                record.duration_ms,
            )
        ],
    )


def tail_audit(conn: sqlite3.Connection, limit: int, after_id: int = 0) -> list[AuditRecord]:
    """The last ``limit`` records with an id above ``after_id``, oldest first."""
    rows = conn.execute(
        "SELECT * FROM (SELECT * FROM audit WHERE id > ? ORDER BY id DESC LIMIT ?) ORDER BY id",
        (after_id, limit),
    ).fetchall()
    return [
        AuditRecord(
            ts=r["ts"],
            key_name=r["key_name"],
            session_id=r["session_id"],
            invocation_id=r["invocation_id"],
            capability=r["capability"],
            inputs_sha256=r["inputs_sha256"],
            outcome=r["outcome"],
            duration_ms=r["duration_ms"],
            id=r["id"],
        )
        for r in rows
    ]


# --- alerts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRecord:
    alert_id: str
    ts: str
    key_name: str
    severity: str
    title: str
    message: str


def insert_alert(
    conn: sqlite3.Connection, key_name: str, severity: str, title: str, message: str
) -> AlertRecord:
    record = AlertRecord("alt_" + secrets.token_hex(8), now(), key_name, severity, title, message)
    conn.execute(
        "INSERT INTO alerts (alert_id, ts, key_name, severity, title, message) VALUES (?, ?, ?, ?, ?, ?)",
        (record.alert_id, record.ts, record.key_name, record.severity, record.title, record.message),
    )
    return record


def list_alerts(conn: sqlite3.Connection, limit: int) -> list[AlertRecord]:
    rows = conn.execute(
        "SELECT * FROM (SELECT * FROM alerts ORDER BY id DESC LIMIT ?) ORDER BY id", (limit,)
    ).fetchall()
    return [
        AlertRecord(r["alert_id"], r["ts"], r["key_name"], r["severity"], r["title"], r["message"])
        for r in rows
    ]
