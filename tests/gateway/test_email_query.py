"""The email search language against a real SQLite replica (the schema of replica_schema.py)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from kruxos_gateway.errors import InvalidInput
from kruxos_gateway.proxies.email import query, replica_schema

NOW = 1_780_000_000.0  # 2026-05-28
DAY = 86400.0


def _row(conn: sqlite3.Connection, uid: int, **fields: object) -> int:
    row: dict[str, object] = {
        "account": "work",
        "mailbox": "INBOX",
        "uidvalidity": 1,
        "uid": uid,
        "message_id": f"m{uid}@example.com",
        "thread_id": f"m{uid}@example.com",
        "internal_date": NOW - uid * DAY,
        "date": NOW - uid * DAY,
    }
    row.update(fields)
    for key in ("to_addrs", "cc_addrs"):
        if isinstance(row.get(key), list):
            row[key] = json.dumps(row[key])
    cur = conn.execute(
        f"INSERT INTO mail_messages ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
        list(row.values()),
    )
    return int(cur.lastrowid or 0)


@pytest.fixture
def conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.executescript(replica_schema.SCHEMA)
    _row(conn, 1, subject="Invoice 42", from_addr="ana@example.com", from_name="Ana", body_text="please pay")
    _row(conn, 2, subject="Re: meeting", from_addr="bo_b@example.org", seen=1, to_addrs=["Cy <cy@x.org>"])
    _row(conn, 3, subject="Résumé", body_text="see attached", has_attachments=1, flagged=1, mailbox="Archive")
    _row(conn, 4, subject="100% off", from_addr="promo@shop.test", body_text='NEAR "quoted" * ^ text')
    return conn


def search(conn: sqlite3.Connection, text: str) -> list[int]:
    sql, params = query.sql(query.parse(text, now=NOW), 20)
    return [r[0] for r in conn.execute(sql, params)]


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("invoice", [1]),
        ('"please pay"', [1]),
        ("resume", [3]),
        ("from:ana", [1]),
        ("-from:ana", [2, 3, 4]),
        ("to:cy@x.org", [2]),
        ("subject:meeting", [2]),
        ("is:unread", [1, 3, 4]),
        ("is:read", [2]),
        ("is:flagged", [3]),
        ("-is:flagged", [1, 2, 4]),
        ("has:attachment", [3]),
        ("in:inbox", [1, 2, 4]),
        ("in:Archive", [3]),
        ("newer_than:36h", [1]),
        ("older_than:3d", [4]),
        ("after:2026-05-25 before:2026/05/27", [2, 3]),
        ("is:unread -invoice", [3, 4]),
        ("re: meeting", [2]),
        ("", [1, 2, 3, 4]),
    ],
    ids=lambda v: str(v),
)
def test_each_operator_selects_its_messages_newest_first(
    conn: sqlite3.Connection, text: str, ids: list[int]
) -> None:
    assert search(conn, text) == ids


@pytest.mark.parametrize(
    "text",
    [
        "NEAR",
        '"',
        "*",
        "^text",
        'subject:"unbalanced',
        "body_text : x",
        '" OR 1=1 --',
        "'; DROP TABLE mail_messages; --",
    ],
)
def test_fts_and_sql_syntax_is_searched_as_text(conn: sqlite3.Connection, text: str) -> None:
    search(conn, text)  # no sqlite3 error
    assert conn.execute("SELECT count(*) FROM mail_messages").fetchone()[0] == 4


def test_like_wildcards_in_from_are_literal(conn: sqlite3.Connection) -> None:
    assert search(conn, "from:%") == []
    assert search(conn, "from:bo_b") == [2]
    assert search(conn, "from:o_b") == [2]
    assert search(conn, "from:b_b") == []


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("form:ana", "form"),
        ("is:sleepy", "is:"),
        ("has:pdf", "has:"),
        ("after:yesterday", "YYYY-MM-DD"),
        ("newer_than:7x", "duration"),
        ("x" * 3000, "characters"),
        ("a " * 40, "terms"),
        ("in\x00box", "NUL"),
    ],
)
def test_bad_queries_are_invalid_input_naming_the_problem(text: str, needle: str) -> None:
    with pytest.raises(InvalidInput) as info:
        query.parse(text, now=NOW)
    assert needle in str(info.value) + str(info.value.recovery)
