"""The durable write buffer of the service proxies: SQLite queries, general for any proxy.

Like ``storage/store.py``, plain synchronous functions of a connection that never commit: the gateway
runs each on its database thread (``db.Database.run``), one job at a time, each in its own
transaction (savepoint), so two of them never interleave. The table is in ``schema``.

A write's life (``state``)::

    pending ──cancel──> cancelled
       │ └──────────── a temporary failure before DATA: pending again, a later attempt ─┐
       └──start──> sending ──> sent / failed / unknown                                  │
                      └────────────────────────────────────────────────────────────────┘

``cancel`` and ``start`` are each one conditional ``UPDATE ... WHERE state = 'pending'``: at the
window's edge exactly one of them changes the row, the other sees it gone. ``start`` is committed
before anything is sent, so a write is delivered at most once, even across a crash: a row found
``sending`` at start-up becomes ``unknown`` (it may or may not have left), never sent again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ..storage import store
from ..timestamps import iso_ms_of

PENDING = "pending"
SENDING = "sending"
FINAL = frozenset({"cancelled", "sent", "failed", "unknown"})


@dataclass(frozen=True)
class Write:
    write_id: str
    key_name: str
    session_id: str
    proxy: str
    kind: str
    payload: dict[str, Any]
    message_id: str
    state: str
    created_at: float
    buffer_until: float
    next_attempt_at: float
    attempts: int
    started_at: float | None
    finished_at: float | None
    detail: str | None

    def to_wire(self) -> dict[str, Any]:
        """What agents see of a write (``proxy.list_writes``, ``proxy.cancel_write``)."""
        return {
            "write_id": self.write_id,
            "proxy": self.proxy,
            "kind": self.kind,
            "state": self.state,
            "message_id": self.message_id,
            "created_at": iso(self.created_at),
            "buffer_until": iso(self.buffer_until),
            "attempts": self.attempts,
            "finished_at": iso(self.finished_at),
            "detail": self.detail,
            "summary": {k: self.payload[k] for k in ("account", "to", "cc", "subject") if k in self.payload},
        }


def iso(ts: float | None) -> str | None:
    return None if ts is None else iso_ms_of(ts)


def _row(r: sqlite3.Row) -> Write:
    return Write(
        write_id=r["write_id"],
        key_name=r["key_name"],
        session_id=r["session_id"],
        proxy=r["proxy"],
        kind=r["kind"],
        payload=json.loads(r["payload"]),
        message_id=r["message_id"],
        state=r["state"],
        created_at=r["created_at"],
        buffer_until=r["buffer_until"],
        next_attempt_at=r["next_attempt_at"],
        attempts=r["attempts"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        detail=r["detail"],
    )


def buffer(
    conn: sqlite3.Connection,
    *,
    write_id: str,
    key_name: str,
    session_id: str,
    proxy: str,
    kind: str,
    payload: dict[str, Any],
    message_id: str,
    window: float,
) -> Write:
    """Record a new pending write, due ``window`` seconds from now."""
    now = time.time()
    conn.execute(
        "INSERT INTO proxy_writes (write_id, key_name, session_id, proxy, kind, payload, message_id, state,"
        " created_at, buffer_until, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
        (
            write_id,
            key_name,
            session_id,
            proxy,
            kind,
            json.dumps(payload, ensure_ascii=False),
            message_id,
            now,
            now + window,
            now + window,
        ),
    )
    written = get(conn, write_id)
    assert written is not None
    return written


def get(conn: sqlite3.Connection, write_id: str) -> Write | None:
    row = conn.execute("SELECT * FROM proxy_writes WHERE write_id = ?", (write_id,)).fetchone()
    return _row(row) if row is not None else None


def cancel(conn: sqlite3.Connection, write_id: str, key_name: str) -> tuple[bool, Write | None]:
    """``pending`` -> ``cancelled`` for the key's own write; whether it won, and the write as it is
    now (``None`` if there is no such write of this key)."""
    cursor = conn.execute(
        "UPDATE proxy_writes SET state = 'cancelled', finished_at = ?"
        " WHERE write_id = ? AND key_name = ? AND state = 'pending'",
        (time.time(), write_id, key_name),
    )
    write = get(conn, write_id)
    if write is None or write.key_name != key_name:
        return False, None
    return cursor.rowcount == 1, write


def start(conn: sqlite3.Connection, write_id: str) -> Write | None:
    """``pending`` -> ``sending`` if the write is due; only the caller that gets the write may send it."""
    now = time.time()
    cursor = conn.execute(
        "UPDATE proxy_writes SET state = 'sending', started_at = ?, attempts = attempts + 1"
        " WHERE write_id = ? AND state = 'pending' AND next_attempt_at <= ?",
        (now, write_id, now),
    )
    return get(conn, write_id) if cursor.rowcount == 1 else None


def due(conn: sqlite3.Connection, now: float | None = None) -> tuple[list[str], float | None]:
    """The ids of the pending writes due now, and when the next one not yet due is."""
    now = time.time() if now is None else now
    rows = conn.execute(
        "SELECT write_id FROM proxy_writes WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY id",
        (now,),
    ).fetchall()
    nxt = conn.execute(
        "SELECT MIN(next_attempt_at) AS t FROM proxy_writes WHERE state = 'pending' AND next_attempt_at > ?",
        (now,),
    ).fetchone()
    return [r["write_id"] for r in rows], nxt["t"]


def finish(conn: sqlite3.Connection, write_id: str, state: str, detail: str | None) -> Write:
    """``sending`` -> ``state`` (``sent``, ``failed`` or ``unknown``), recorded in the audit log.

    The audit record is the delivery's, beside the invocation that buffered it: the write's key,
    session ``proxy:NAME``, the write id as ``invocation_id``, ``PROXY.KIND`` as the capability, the
    payload's digest, and the final state as ``outcome``, so ``kruxosctl audit`` shows an ``unknown``.
    """
    assert state in FINAL - {"cancelled"}
    conn.execute(
        "UPDATE proxy_writes SET state = ?, finished_at = ?, detail = ?"
        " WHERE write_id = ? AND state = 'sending'",
        (state, time.time(), detail, write_id),
    )
    finished = get(conn, write_id)
    assert finished is not None
    store.append_audit(
        conn,
        store.AuditRecord(
            ts=store.now(),
            key_name=finished.key_name,
            session_id=f"proxy:{finished.proxy}",
            invocation_id=finished.write_id,
            capability=f"{finished.proxy}.{finished.kind}",
            inputs_sha256=store.inputs_digest(finished.payload),
            outcome=finished.state,
            duration_ms=round(((finished.finished_at or 0.0) - (finished.started_at or 0.0)) * 1000, 3),
        ),
    )
    return finished


def retry_later(conn: sqlite3.Connection, write_id: str, delay: float, detail: str) -> Write:
    """``sending`` -> ``pending`` again after a temporary failure before DATA (nothing left)."""
    conn.execute(
        "UPDATE proxy_writes SET state = 'pending', next_attempt_at = ?, detail = ?"
        " WHERE write_id = ? AND state = 'sending'",
        (time.time() + delay, detail, write_id),
    )
    write = get(conn, write_id)
    assert write is not None
    return write


def interrupt_sending(conn: sqlite3.Connection) -> list[Write]:
    """At start-up: writes a stopped gateway left ``sending`` become ``unknown`` (never re-sent)."""
    rows = conn.execute("SELECT write_id FROM proxy_writes WHERE state = 'sending'").fetchall()
    detail = "the gateway stopped while sending; it may or may not have been delivered, and is not retried"
    conn.execute(
        "UPDATE proxy_writes SET state = 'unknown', finished_at = ?, detail = ? WHERE state = 'sending'",
        (time.time(), detail),
    )
    return [w for w in (get(conn, r["write_id"]) for r in rows) if w is not None]


def of_key(conn: sqlite3.Connection, key_name: str, limit: int) -> list[Write]:
    """The key's pending and sending writes, and its most recent others, newest first."""
    rows = conn.execute(
        "SELECT * FROM proxy_writes WHERE key_name = ? AND (state IN ('pending', 'sending') OR id IN"
        " (SELECT id FROM proxy_writes WHERE key_name = ? ORDER BY id DESC LIMIT ?)) ORDER BY id DESC",
        (key_name, key_name, limit),
    ).fetchall()
    return [_row(r) for r in rows]
