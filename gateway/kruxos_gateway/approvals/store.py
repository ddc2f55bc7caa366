"""SQLite tables and queries for approvals (the gateway and ``kruxosctl approvals`` share them).

Like ``store``, plain synchronous functions of a connection that never commit: the gateway runs them
on its database thread, ``kruxosctl`` inside ``store.transaction``. The tables are in ``schema``,
which ``store.connect`` creates on every open, so databases created before approvals existed get them too.

An approval's life (``status``)::

    pending ──approve──> approved ──claim──> running ──finish──> completed
       │                                        └── gateway restarted mid-run ──> interrupted
       ├──reject──> rejected
       └──expiry──> expired

``completed``, ``rejected``, ``expired`` and ``interrupted`` are final ("resolved"). The step to
``running`` is committed before the invocation starts, so an approved invocation runs at most once,
even across a crash: a row found ``running`` at start-up is marked ``interrupted``, never re-run.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..storage import store

OPEN = ("pending", "approved", "running")
RESOLVED = frozenset({"completed", "rejected", "expired", "interrupted"})
APPROVED = frozenset({"approved", "running", "completed", "interrupted"})


class NotPending(Exception):
    """The approval exists but can no longer be decided (``status`` says where it is)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class Approval:
    approval_id: str
    key_name: str
    session_id: str
    capability: str
    inputs: dict[str, Any]
    inputs_sha256: str
    rule: str
    status: str
    created_at: float
    expires_at: float
    decided_at: float | None
    decided_by: str | None
    reason: str | None
    started_at: float | None
    finished_at: float | None
    result: dict[str, Any] | None

    @property
    def resolved(self) -> bool:
        return self.status in RESOLVED

    @property
    def approved(self) -> bool | None:
        if self.status == "pending":
            return None
        return self.status in APPROVED

    def to_wire(self) -> dict[str, Any]:
        """The ``ApprovalStatus`` object of docs/protocol.md (also the ``approval.resolved`` data)."""
        result = self.result or {}
        return {
            "approval_id": self.approval_id,
            "status": self.status,
            "resolved": self.resolved,
            "approved": self.approved,
            "reason": self.reason,
            "capability": self.capability,
            "rule": self.rule,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "decided_at": iso(self.decided_at),
            "decided_by": self.decided_by,
            "invocation_id": result.get("invocation_id"),
            "success": result.get("success"),
            "data": result.get("data"),
            "error": result.get("error"),
            "duration_ms": result.get("duration_ms"),
        }


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _row(r: sqlite3.Row) -> Approval:
    return Approval(
        approval_id=r["approval_id"],
        key_name=r["key_name"],
        session_id=r["session_id"],
        capability=r["capability"],
        inputs=json.loads(r["inputs"]),
        inputs_sha256=r["inputs_sha256"],
        rule=r["rule"],
        status=r["status"],
        created_at=r["created_at"],
        expires_at=r["expires_at"],
        decided_at=r["decided_at"],
        decided_by=r["decided_by"],
        reason=r["reason"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        result=json.loads(r["result"]) if r["result"] is not None else None,
    )


def canonical(inputs: dict[str, Any]) -> str:
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def find_or_create(
    conn: sqlite3.Connection,
    *,
    approval_id: str,
    key_name: str,
    session_id: str,
    capability: str,
    inputs: dict[str, Any],
    inputs_sha256: str,
    rule: str,
    ttl: float,
) -> tuple[Approval, bool]:
    """The pending approval for this exact invocation by this key, or a new one; and whether it is new."""
    expire_due(conn)
    row = conn.execute(
        "SELECT * FROM approvals WHERE status = 'pending' AND key_name = ? AND capability = ?"
        " AND inputs_sha256 = ? ORDER BY id LIMIT 1",
        (key_name, capability, inputs_sha256),
    ).fetchone()
    if row is not None:
        return _row(row), False
    now = time.time()
    conn.execute(
        "INSERT INTO approvals (approval_id, key_name, session_id, capability, inputs, inputs_sha256, rule,"
        " status, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        (
            approval_id,
            key_name,
            session_id,
            capability,
            canonical(inputs),
            inputs_sha256,
            rule,
            now,
            now + ttl,
        ),
    )
    created = get(conn, approval_id)
    assert created is not None
    return created, True


def get(conn: sqlite3.Connection, approval_id: str) -> Approval | None:
    row = conn.execute("SELECT * FROM approvals WHERE approval_id = ?", (approval_id,)).fetchone()
    return _row(row) if row is not None else None


def list_approvals(conn: sqlite3.Connection, *, open_only: bool, limit: int = 100) -> list[Approval]:
    if open_only:
        rows = conn.execute(
            "SELECT * FROM approvals WHERE status IN ('pending', 'approved', 'running') ORDER BY id LIMIT ?",
            (limit,),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT * FROM (SELECT * FROM approvals ORDER BY id DESC LIMIT ?) ORDER BY id", (limit,)
        ).fetchall()
    return [_row(r) for r in rows]


def record_decision(
    conn: sqlite3.Connection, approval_id: str, decision: str, operator: str, reason: str
) -> None:
    """Log a decision (who, when, why) in ``approval_decisions`` and in the audit log.

    The audit record has ``key_name`` ``operator:NAME``, the approval id as ``invocation_id`` and the
    decision as ``outcome``; the reason is in ``approval_decisions`` (``kruxosctl approvals show``).
    """
    conn.execute(
        "INSERT INTO approval_decisions (ts, approval_id, decision, operator, reason) VALUES (?, ?, ?, ?, ?)",
        (iso(time.time()), approval_id, decision, operator, reason),
    )
    row = conn.execute(
        "SELECT capability, inputs_sha256 FROM approvals WHERE approval_id = ?", (approval_id,)
    ).fetchone()
    store.append_audit(
        conn,
        store.AuditRecord(
            ts=store.now(),
            key_name=f"operator:{operator}",
            session_id="approvals",
            invocation_id=approval_id,
            capability=row["capability"] if row is not None else "",
            inputs_sha256=row["inputs_sha256"] if row is not None else "",
            outcome=decision,
            duration_ms=0.0,
        ),
    )


def decisions(conn: sqlite3.Connection, approval_id: str) -> list[tuple[str, str, str, str]]:
    """``(ts, decision, operator, reason)`` of every decision on ``approval_id``, oldest first."""
    rows = conn.execute(
        "SELECT ts, decision, operator, reason FROM approval_decisions WHERE approval_id = ? ORDER BY id",
        (approval_id,),
    ).fetchall()
    return [(r["ts"], r["decision"], r["operator"], r["reason"]) for r in rows]


def take_unnotified(conn: sqlite3.Connection) -> list[Approval]:
    """Resolved approvals whose result has not been pushed to agents yet; marks them pushed."""
    rows = conn.execute(
        "SELECT * FROM approvals WHERE notified = 0 AND status IN"
        " ('completed', 'rejected', 'expired', 'interrupted') ORDER BY id"
    ).fetchall()
    conn.executemany("UPDATE approvals SET notified = 1 WHERE id = ?", [(r["id"],) for r in rows])
    return [_row(r) for r in rows]


def decide(
    conn: sqlite3.Connection, approval_id: str, *, approve: bool, operator: str, reason: str
) -> Approval:
    """Approve or reject a pending approval; raise ``KeyError`` if unknown, ``NotPending`` if decided."""
    expire_due(conn)
    current = get(conn, approval_id)
    if current is None:
        raise KeyError(approval_id)
    if current.status != "pending":
        raise NotPending(current.status)
    status = "approved" if approve else "rejected"
    conn.execute(
        "UPDATE approvals SET status = ?, decided_at = ?, decided_by = ?, reason = ? WHERE approval_id = ?"
        " AND status = 'pending'",
        (status, time.time(), operator, reason, approval_id),
    )
    record_decision(conn, approval_id, status, operator, reason)
    decided = get(conn, approval_id)
    assert decided is not None
    return decided


def expire_due(conn: sqlite3.Connection, now: float | None = None) -> list[Approval]:
    """Mark every pending approval past its expiry as ``expired`` (a rejection); return them."""
    now = time.time() if now is None else now
    rows = conn.execute(
        "SELECT * FROM approvals WHERE status = 'pending' AND expires_at <= ?", (now,)
    ).fetchall()
    expired = []
    for r in rows:
        reason = "expired: no operator decided within the approval timeout"
        conn.execute(
            "UPDATE approvals SET status = 'expired', decided_at = ?, decided_by = 'gateway', reason = ?"
            " WHERE approval_id = ?",
            (now, reason, r["approval_id"]),
        )
        record_decision(conn, r["approval_id"], "expired", "gateway", reason)
        expired.append(get(conn, r["approval_id"]))
    return [a for a in expired if a is not None]


def approved_to_run(conn: sqlite3.Connection) -> list[Approval]:
    rows = conn.execute("SELECT * FROM approvals WHERE status = 'approved' ORDER BY id").fetchall()
    return [_row(r) for r in rows]


def claim(conn: sqlite3.Connection, approval_id: str) -> bool:
    """``approved`` -> ``running``; only the caller that gets True may run the invocation."""
    cursor = conn.execute(
        "UPDATE approvals SET status = 'running', started_at = ?"
        " WHERE approval_id = ? AND status = 'approved'",
        (time.time(), approval_id),
    )
    return cursor.rowcount == 1


def finish(conn: sqlite3.Connection, approval_id: str, result: dict[str, Any]) -> Approval:
    conn.execute(
        "UPDATE approvals SET status = 'completed', finished_at = ?, result = ? WHERE approval_id = ?"
        " AND status = 'running'",
        (time.time(), json.dumps(result, default=str), approval_id),
    )
    finished = get(conn, approval_id)
    assert finished is not None
    return finished


def interrupt_running(conn: sqlite3.Connection) -> list[Approval]:
    """At start-up: approvals left ``running`` by a gateway that stopped mid-run become ``interrupted``."""
    rows = conn.execute("SELECT approval_id FROM approvals WHERE status = 'running'").fetchall()
    reason = "the gateway stopped while the approved invocation was running; it was not run again"
    for r in rows:
        conn.execute(
            "UPDATE approvals SET status = 'interrupted', finished_at = ?, reason = ? WHERE approval_id = ?",
            (time.time(), reason, r["approval_id"]),
        )
        record_decision(conn, r["approval_id"], "interrupted", "gateway", reason)
    return [a for a in (get(conn, r["approval_id"]) for r in rows) if a is not None]
