"""Synchronous queries of agent state (run on the database thread; none of them commits).

Values are stored as canonical JSON text. Every function takes the connection first, like ``store``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from ..storage import store
from .quotas import Usage, value_size


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --- persistent ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """One version of a persistent key."""

    key: str
    version: int
    value: Any
    updated_at: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "version": self.version,
            "found": True,
            "updated_at": self.updated_at,
        }


def _current_size(conn: sqlite3.Connection, owner: str, key: str) -> int | None:
    """The bytes of the current (newest live) value of ``owner``'s ``key``; None if it has none."""
    row = conn.execute(
        "SELECT length(CAST(value AS BLOB)) FROM state_persistent WHERE owner = ? AND key = ?"
        " AND reverted = 0 ORDER BY version DESC LIMIT 1",
        (owner, key),
    ).fetchone()
    return None if row is None else int(row[0])


def persistent_set(
    conn: sqlite3.Connection,
    owner: str,
    key: str,
    value: str,
    session_id: str,
    keep: int,
    usage: Usage | None = None,
) -> Version:
    """Write a new version of ``owner``'s ``key``; keep the newest ``keep`` version numbers.

    With ``usage``, refused with ``QuotaExceeded`` (nothing written) if it would take ``owner`` past
    its persistent quotas.
    """
    if usage is not None:
        held = usage.persistent(conn, owner)  # before this write, which it would otherwise include
        old = _current_size(conn, owner, key)
        keys = held.keys + (old is None)
        size = held.bytes - (old or 0) + value_size(value)
        usage.check("persistent", owner, key, held, keys, size)
    last = conn.execute(
        "SELECT max(version) FROM state_persistent WHERE owner = ? AND key = ?", (owner, key)
    ).fetchone()[0]
    version = (last or 0) + 1
    ts = store.now()
    conn.execute(
        "INSERT INTO state_persistent (owner, key, version, value, updated_at, session_id)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (owner, key, version, value, ts, session_id),
    )
    conn.execute(
        "DELETE FROM state_persistent WHERE owner = ? AND key = ? AND version <= ?",
        (owner, key, version - keep),
    )
    if usage is not None:
        held.keys, held.bytes = keys, size
    return Version(key, version, load(value), ts)


def persistent_get(conn: sqlite3.Connection, owner: str, key: str, version: int | None) -> Version | None:
    """The newest live version of ``key`` (or the given ``version``); None if there is none."""
    if version is None:
        row = conn.execute(
            "SELECT version, value, updated_at FROM state_persistent WHERE owner = ? AND key = ?"
            " AND reverted = 0 ORDER BY version DESC LIMIT 1",
            (owner, key),
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT version, value, updated_at FROM state_persistent WHERE owner = ? AND key = ?"
            " AND version = ? AND reverted = 0",
            (owner, key, version),
        ).fetchone()
    if row is None:
        return None
    return Version(key, row["version"], load(row["value"]), row["updated_at"])


def persistent_history(conn: sqlite3.Connection, owner: str, key: str, limit: int) -> list[Version]:
    """The newest ``limit`` live versions of ``key``, newest first."""
    rows = conn.execute(
        "SELECT version, value, updated_at FROM state_persistent WHERE owner = ? AND key = ?"
        " AND reverted = 0 ORDER BY version DESC LIMIT ?",
        (owner, key, limit),
    ).fetchall()
    return [Version(key, r["version"], load(r["value"]), r["updated_at"]) for r in rows]


def persistent_list(conn: sqlite3.Connection, owner: str, prefix: str) -> list[Version]:
    """The newest live version of every key of ``owner`` under ``prefix``, sorted by key."""
    rows = conn.execute(
        "SELECT key, max(version) AS version, value, updated_at FROM state_persistent"
        " WHERE owner = ? AND reverted = 0 AND substr(key, 1, ?) = ? GROUP BY key ORDER BY key",
        (owner, len(prefix), prefix),
    ).fetchall()
    return [Version(r["key"], r["version"], load(r["value"]), r["updated_at"]) for r in rows]


def persistent_revert(
    conn: sqlite3.Connection, owner: str, key: str, version: int, usage: Usage | None = None
) -> bool:
    """Undo one version (a transaction rolled back); its number is not reused.

    The key's current value becomes its newest version left (or none): ``usage`` is updated to match,
    never refused (undoing must not fail on a quota).
    """
    held = usage.persistent(conn, owner) if usage is not None else None
    before = _current_size(conn, owner, key)
    cursor = conn.execute(
        "UPDATE state_persistent SET reverted = 1 WHERE owner = ? AND key = ? AND version = ?",
        (owner, key, version),
    )
    if held is not None:
        after = _current_size(conn, owner, key)
        held.keys += (after is not None) - (before is not None)
        held.bytes += (after or 0) - (before or 0)
    return cursor.rowcount > 0


# --- shared -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One committed change of a shared key: its new per-key version and global revision."""

    key: str
    value: Any
    version: int
    revision: int
    deleted: bool
    updated_at: str
    updated_by: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "version": self.version,
            "revision": self.revision,
            "deleted": self.deleted,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
        }


@dataclass(frozen=True)
class Conflict:
    """A conditional write found another version than expected (0: the key is absent)."""

    key: str
    expected: int
    current: int


def visible_version(row: sqlite3.Row | None) -> int:
    """The version readers see: 0 for a key that does not exist or was deleted."""
    return 0 if row is None or row["deleted"] else int(row["version"])


def shared_get(conn: sqlite3.Connection, key: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT key, value, version, revision, deleted, updated_at, updated_by FROM state_shared"
        " WHERE key = ?",
        (key,),
    ).fetchone()
    return row


def shared_write(
    conn: sqlite3.Connection,
    key: str,
    value: str | None,
    expected: int | None,
    by: str,
    keep: int,
    usage: Usage | None = None,
    enforce: bool = True,
) -> Change | Conflict:
    """Read, check ``expected`` and write in one job: the linearization point of a shared write.

    ``value`` None deletes (a tombstone). ``expected`` None writes unconditionally; 0 means "only if
    the key is absent". Versions of a key only grow, also across a delete and re-create. With
    ``usage``, a write that would take ``by`` past its shared quotas is refused with ``QuotaExceeded``
    (after the version check; nothing written) unless ``enforce`` is false (a rollback putting back
    what was there). The key then counts for ``by``, no longer for the API key that wrote it before.
    """
    row = shared_get(conn, key)
    current = visible_version(row)
    if expected is not None and expected != current:
        return Conflict(key, expected, current)
    if usage is not None:
        mine = usage.shared(conn, by)
        live = row if row is not None and not row["deleted"] else None
        old_size = value_size(live["value"]) if live is not None else 0
        previous = str(live["updated_by"]) if live is not None else None
        new_size = 0 if value is None else value_size(value)
        keys, size = mine.keys + (value is not None), mine.bytes + new_size
        if previous == by:
            keys, size = keys - 1, size - old_size
        if enforce:
            usage.check("shared", by, key, mine, keys, size)
    version = (int(row["version"]) if row is not None else 0) + 1
    ts = store.now()
    deleted = value is None
    cursor = conn.execute(
        "INSERT INTO state_shared_log (key, value, version, deleted, updated_at, updated_by)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (key, value, version, int(deleted), ts, by),
    )
    revision = int(cursor.lastrowid or 0)
    conn.execute(
        "INSERT INTO state_shared (key, value, version, revision, deleted, updated_at, updated_by)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
        " version = excluded.version, revision = excluded.revision, deleted = excluded.deleted,"
        " updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        (key, value, version, revision, int(deleted), ts, by),
    )
    if revision % min(256, keep) == 0:  # trim now and then, not on every write
        conn.execute("DELETE FROM state_shared_log WHERE revision <= ?", (revision - keep,))
    if usage is not None:
        if previous is not None and previous != by:
            theirs = usage.shared(conn, previous)
            theirs.keys, theirs.bytes = theirs.keys - 1, theirs.bytes - old_size
        mine.keys, mine.bytes = keys, size
    return Change(key, load(value), version, revision, deleted, ts, by)


def shared_head(conn: sqlite3.Connection) -> int:
    """The newest revision ever assigned (0 if none)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'state_shared_log'").fetchone()
    return int(row[0]) if row is not None else 0


@dataclass(frozen=True)
class Replay:
    """The changes under a prefix after a revision, or why they cannot be replayed."""

    changes: list[Change]
    trimmed: bool
    oldest: int


def shared_replay(conn: sqlite3.Connection, prefix: str, after: int, upto: int) -> Replay:
    """The changes with ``after < revision <= upto`` under ``prefix``, oldest first."""
    oldest_row = conn.execute("SELECT min(revision) FROM state_shared_log").fetchone()[0]
    oldest = int(oldest_row) if oldest_row is not None else upto + 1
    if after + 1 < oldest and after < upto:
        return Replay([], True, oldest)
    rows = conn.execute(
        "SELECT revision, key, value, version, deleted, updated_at, updated_by FROM state_shared_log"
        " WHERE revision > ? AND revision <= ? AND substr(key, 1, ?) = ? ORDER BY revision",
        (after, upto, len(prefix), prefix),
    ).fetchall()
    return Replay([_change(r) for r in rows], False, oldest)


def shared_log_value(conn: sqlite3.Connection, key: str, version: int) -> tuple[bool, Any] | None:
    """The value ``key`` had at ``version``: (exists, value); None if that version was trimmed."""
    if version == 0:
        return (False, None)
    row = conn.execute(
        "SELECT value, deleted FROM state_shared_log WHERE key = ? AND version = ?", (key, version)
    ).fetchone()
    if row is None:
        return None
    return (not row["deleted"], load(row["value"]))


def _change(r: sqlite3.Row) -> Change:
    return Change(
        r["key"],
        load(r["value"]),
        r["version"],
        r["revision"],
        bool(r["deleted"]),
        r["updated_at"],
        r["updated_by"],
    )


def record_watch(conn: sqlite3.Connection, owner: str, prefix: str) -> None:
    conn.execute(
        "INSERT INTO state_watch_prefixes (owner, prefix, watched_at) VALUES (?, ?, ?)"
        " ON CONFLICT(owner, prefix) DO UPDATE SET watched_at = excluded.watched_at",
        (owner, prefix, store.now()),
    )


# --- sessions and file events (briefings) --------------------------------------------------------


# Briefings only need the newest rows of these two tables; older ones are trimmed as new ones come.
KEEP_SESSIONS_PER_KEY = 100
KEEP_FILE_EVENTS = 100_000


def record_session_end(conn: sqlite3.Connection, session_id: str, owner: str) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO state_sessions (session_id, owner, closed_at) VALUES (?, ?, ?)",
        (session_id, owner, store.now()),
    )
    conn.execute(
        "DELETE FROM state_sessions WHERE owner = ? AND session_id NOT IN (SELECT session_id FROM"
        " state_sessions WHERE owner = ? ORDER BY closed_at DESC LIMIT ?)",
        (owner, owner, KEEP_SESSIONS_PER_KEY),
    )


def record_file_event(
    conn: sqlite3.Connection, owner: str, session_id: str, capability: str, paths: list[str]
) -> None:
    ts = store.now()
    conn.executemany(
        "INSERT INTO state_file_events (ts, owner, session_id, capability, path) VALUES (?, ?, ?, ?, ?)",
        [(ts, owner, session_id, capability, p) for p in paths],
    )
    newest = conn.execute("SELECT max(id) FROM state_file_events").fetchone()[0] or 0
    if newest % 1000 < len(paths):  # about once per thousand events
        conn.execute("DELETE FROM state_file_events WHERE id <= ?", (newest - KEEP_FILE_EVENTS,))
