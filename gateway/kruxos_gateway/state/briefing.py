"""``state.briefing.generate``: what changed since this agent's (API key's) last session ended.

Built only from what the database records (state history, shared-state log, file events, alerts,
approvals), so the same database gives the same briefing. Each part is a :data:`Source`: a function
of the connection and the window that returns its details and one summary phrase. A feature that
wants to appear in briefings appends a source to :data:`SOURCES`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

LIMIT = 100  # entries per part; the counts are always complete


@dataclass(frozen=True)
class Window:
    owner: str
    session_id: str
    since: str  # ISO 8601 UTC; "" when this key never had a session before


#: (name, function) pairs; each function returns (details, summary phrase or None).
Source = Callable[[sqlite3.Connection, Window], tuple[dict[str, Any], str | None]]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _names(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def persistent(conn: sqlite3.Connection, w: Window) -> tuple[dict[str, Any], str | None]:
    rows = conn.execute(
        "SELECT key, max(version) AS version, updated_at FROM state_persistent"
        " WHERE owner = ? AND reverted = 0 GROUP BY key ORDER BY key",
        (w.owner,),
    ).fetchall()
    keys = [
        {
            "key": r["key"],
            "version": r["version"],
            "updated_at": r["updated_at"],
            "changed_since_last_session": r["updated_at"] > w.since,
        }
        for r in rows
    ]
    changed = [k["key"] for k in keys if k["changed_since_last_session"]]
    details = {"count": len(keys), "changed": len(changed), "keys": keys[:LIMIT]}
    if not keys:
        return details, "you have no persistent keys"
    phrase = f"you have {_plural(len(keys), 'persistent key')} ({_names([k['key'] for k in keys])})"
    if changed and w.since:
        phrase += f", {len(changed)} changed since by another session of yours ({_names(changed)})"
    return details, phrase


def shared(conn: sqlite3.Connection, w: Window) -> tuple[dict[str, Any], str | None]:
    touched = {
        r[0]
        for r in conn.execute("SELECT DISTINCT key FROM state_shared_log WHERE updated_by = ?", (w.owner,))
    }
    prefixes = [
        r[0]
        for r in conn.execute(
            "SELECT prefix FROM state_watch_prefixes WHERE owner = ? ORDER BY prefix", (w.owner,)
        )
    ]
    rows = conn.execute(
        "SELECT key, version, deleted, updated_at, updated_by FROM state_shared WHERE updated_at > ?"
        " ORDER BY key",
        (w.since,),
    ).fetchall()
    changed = []
    for r in rows:
        watched = any(r["key"].startswith(p) for p in prefixes)
        if r["key"] in touched or watched:
            changed.append(
                {
                    "key": r["key"],
                    "version": r["version"],
                    "deleted": bool(r["deleted"]),
                    "updated_at": r["updated_at"],
                    "updated_by": r["updated_by"],
                    "why": "touched" if r["key"] in touched else "watched",
                }
            )
    details = {"watched_prefixes": prefixes, "count": len(changed), "changed": changed[:LIMIT]}
    if not changed:
        return details, None
    names = _names([c["key"] for c in changed])
    return details, f"{_plural(len(changed), 'shared key')} you touched or watch changed ({names})"


def files(conn: sqlite3.Connection, w: Window) -> tuple[dict[str, Any], str | None]:
    rows = conn.execute(
        "SELECT path, count(*) AS n, max(ts) AS last_ts FROM state_file_events WHERE ts > ?"
        " GROUP BY path ORDER BY path",
        (w.since,),
    ).fetchall()
    entries = []
    for r in rows[:LIMIT]:
        last = conn.execute(
            "SELECT capability, owner FROM state_file_events WHERE path = ? AND ts = ?"
            " ORDER BY id DESC LIMIT 1",
            (r["path"], r["last_ts"]),
        ).fetchone()
        entries.append(
            {
                "path": r["path"],
                "changes": r["n"],
                "last_at": r["last_ts"],
                "last_capability": last["capability"],
                "last_by": last["owner"],
            }
        )
    details = {"count": len(rows), "paths": entries}
    if not rows:
        return details, None
    return details, f"{_plural(len(rows), 'workspace path')} changed ({_names([r['path'] for r in rows])})"


def alerts(conn: sqlite3.Connection, w: Window) -> tuple[dict[str, Any], str | None]:
    rows = conn.execute(
        "SELECT alert_id, ts, key_name, severity, title FROM alerts WHERE ts > ? ORDER BY id", (w.since,)
    ).fetchall()
    entries = [dict(r) for r in rows[-LIMIT:]]
    details = {"count": len(rows), "alerts": entries}
    if not rows:
        return details, None
    return details, f"{_plural(len(rows), 'alert')} raised ({_names([r['title'] for r in rows], 3)})"


def approvals(conn: sqlite3.Connection, w: Window) -> tuple[dict[str, Any], str | None]:
    """Approvals of this key decided in the window, if this gateway has approvals (read defensively)."""
    columns = {r["name"] for r in conn.execute("PRAGMA table_info(approvals)")}
    needed = {"approval_id", "key_name", "capability", "status", "decided_at"}
    if not needed <= columns:
        return {"available": False, "count": 0, "approvals": []}, None
    since = _unix(w.since)
    rows = conn.execute(
        "SELECT approval_id, capability, status, decided_at FROM approvals"
        " WHERE key_name = ? AND decided_at IS NOT NULL AND decided_at > ? ORDER BY decided_at, approval_id",
        (w.owner, since),
    ).fetchall()
    entries = [
        {
            "approval_id": r["approval_id"],
            "capability": r["capability"],
            "status": r["status"],
            "decided_at": _iso(r["decided_at"]),
        }
        for r in rows[:LIMIT]
    ]
    details = {"available": True, "count": len(rows), "approvals": entries}
    if not rows:
        return details, None
    return details, f"{_plural(len(rows), 'approval')} decided"


def _unix(iso: str) -> float:
    if not iso:
        return 0.0
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _iso(ts: Any) -> str:
    if isinstance(ts, int | float):
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return str(ts)


SOURCES: list[tuple[str, Source]] = [
    ("persistent", persistent),
    ("shared", shared),
    ("files", files),
    ("approvals", approvals),
    ("alerts", alerts),
]


def build(conn: sqlite3.Connection, owner: str, session_id: str) -> dict[str, Any]:
    """The briefing for the key ``owner``, whose current session is ``session_id``."""
    last = conn.execute(
        "SELECT max(closed_at) FROM state_sessions WHERE owner = ? AND session_id != ?", (owner, session_id)
    ).fetchone()[0]
    window = Window(owner, session_id, last or "")
    report: dict[str, Any] = {"key_name": owner, "since": last, "first_session": last is None}
    phrases = []
    for name, source in SOURCES:
        details, phrase = source(conn, window)
        report[name] = details
        if phrase:
            phrases.append(phrase)
    opening = f"Since your last session ended ({last})" if last else "This is the first session of this key"
    changes = "; ".join(phrases) if phrases else "nothing changed"
    report["summary"] = f"{opening}: {changes}."
    return report
