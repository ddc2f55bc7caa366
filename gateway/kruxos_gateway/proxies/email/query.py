"""The search language of ``email.search`` (Gmail's and notmuch's operators), turned into SQL.

A query is words, ``"quoted phrases"`` and ``operator:value`` terms; ``-`` before a term negates it.
Operators: ``from:``, ``to:`` (To and Cc), ``subject:``, ``is:unread|read|flagged|unflagged``,
``has:attachment``, ``in:MAILBOX`` (``inbox`` in any case is INBOX), ``after:``/``before:``
(YYYY-MM-DD or YYYY/MM/DD, UTC), ``newer_than:``/``older_than:`` (``Nh``, ``Nd``, ``Nw``, ``Nm``, ``Ny``).

The agent's text never reaches SQLite as syntax: every value is a bound parameter, every free-text
token goes into the FTS5 MATCH expression as a quoted string (``"`` doubled), so ``NEAR``, ``*``,
``^``, ``OR``, column filters and unbalanced quotes are plain words; ``%`` and ``_`` in ``from:`` are
escaped for LIKE. A word whose prefix before ``:`` is not an operator (``re:``, ``https://...``,
``10:30``) is free text, because mail is full of such words; only ``word:value`` where ``word`` looks
like an operator name we might add (letters and ``_``) and is unknown is refused, so a typo such as
``form:ana`` is not silently searched as text.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ...errors import InvalidInput

MAX_QUERY_CHARS = 2000
MAX_TERMS = 32
MAX_LIMIT = 100

_DURATION = {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}
_IS = {
    "unread": ("seen = 0", "seen = 1"),
    "read": ("seen = 1", "seen = 0"),
    "flagged": ("flagged = 1", "flagged = 0"),
    "unflagged": ("flagged = 0", "flagged = 1"),
}
_OPERATORS = {"from", "to", "subject", "is", "has", "in", "after", "before", "newer_than", "older_than"}
# Words users write with a colon that are text, not operators (subjects, links, times).
_TEXT_PREFIXES = {"re", "fw", "fwd", "aw", "sv", "tr", "http", "https", "mailto", "ftp", "urn"}
_TERM = re.compile(r'(-?)(?:([A-Za-z_]+):)?("[^"]*"?|\S+)')


@dataclass
class Query:
    """The SQL of one search: ``where`` joined with AND, ``match`` an FTS5 expression or None."""

    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    match: list[str] = field(default_factory=list)
    not_match: list[str] = field(default_factory=list)

    def add(self, clause: str, *params: Any) -> None:
        self.where.append(clause)
        self.params.extend(params)


def _fts_string(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def parse_date(name: str, value: str) -> float:
    """Midnight UTC of a date written YYYY-MM-DD or YYYY/MM/DD, as epoch seconds."""
    for fmt in ("%Y-%m-%d", "%Y/%m/%d"):
        try:
            day = datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
        return float(calendar.timegm(day.timetuple()))
    raise InvalidInput(
        "query" if ":" in name else name,
        f"{name} {value!r} is not a date",
        f"write {name.rstrip(':')} as YYYY-MM-DD or YYYY/MM/DD, e.g. 2026-03-01",
    )


def _duration(name: str, value: str) -> float:
    match = re.fullmatch(r"(\d{1,5})([hdwmy])", value.lower())
    if match is None:
        raise InvalidInput(
            "query",
            f"{name}:{value!r} is not a duration",
            f"write {name}: as a number and a unit h, d, w, m or y, e.g. {name}:7d",
        )
    return int(match.group(1)) * _DURATION[match.group(2)]


def _unquote(value: str) -> str:
    if value.startswith('"'):
        value = value[1:]
        if value.endswith('"'):
            value = value[:-1]
    return value


def _operator(q: Query, name: str, value: str, negate: bool, now: float) -> None:
    value = _unquote(value)
    if name == "is":
        if value.lower() not in _IS:
            raise InvalidInput(
                "query", f"is:{value!r} is not known", "write is:unread, is:read, is:flagged or is:unflagged"
            )
        q.add(_IS[value.lower()][1 if negate else 0])
        return
    if name == "has":
        if value.lower() not in ("attachment", "attachments"):
            raise InvalidInput("query", f"has:{value!r} is not known", "write has:attachment")
        q.add("has_attachments = 0" if negate else "has_attachments = 1")
        return
    if not value:
        raise InvalidInput("query", f"{name}: has no value", f"write {name}:VALUE, e.g. {name}:ana")
    not_ = "NOT " if negate else ""
    if name == "from":
        q.add(
            f"{not_}(from_addr LIKE ? ESCAPE '\\' OR from_name LIKE ? ESCAPE '\\')",
            _like(value),
            _like(value),
        )
    elif name == "to":
        q.add(
            f"{not_}(to_addrs LIKE ? ESCAPE '\\' OR cc_addrs LIKE ? ESCAPE '\\')", _like(value), _like(value)
        )
    elif name == "subject":
        q.add(f"{not_}(subject LIKE ? ESCAPE '\\')", _like(value))
    elif name == "in":
        mailbox = "INBOX" if value.upper() == "INBOX" else value
        q.add("mailbox != ?" if negate else "mailbox = ?", mailbox)
    elif name in ("after", "before", "newer_than", "older_than"):
        at = parse_date(name + ":", value) if name in ("after", "before") else now - _duration(name, value)
        later = name in ("after", "newer_than")
        if negate:
            later = not later
        q.add("coalesce(date, internal_date) >= ?" if later else "coalesce(date, internal_date) < ?", at)


def parse(text: str, now: float | None = None) -> Query:
    """The query's SQL; ``InvalidInput`` naming the term at fault and the accepted forms."""
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(
            "query", f"the query is {len(text)} characters long", f"shorten it to at most {MAX_QUERY_CHARS}"
        )
    if "\x00" in text:
        raise InvalidInput("query", "the query contains a NUL character", "remove it")
    now = time.time() if now is None else now
    q = Query()
    terms = _TERM.findall(text)
    if len(terms) > MAX_TERMS:
        raise InvalidInput("query", f"the query has {len(terms)} terms", f"use at most {MAX_TERMS}")
    for sign, name, value in terms:
        negate = sign == "-"
        lower = name.lower()
        if name and lower in _OPERATORS:
            _operator(q, lower, value, negate, now)
            continue
        if name and lower not in _TEXT_PREFIXES and value and not value.startswith("/"):
            raise InvalidInput(
                "query",
                f"{name}: is not a search operator",
                "use from:, to:, subject:, is:, has:attachment, in:, after:, before:, newer_than:, "
                'older_than:, or quote the word ("' + name + ":" + value + '") to search it as text',
            )
        word = (name + ":" if name else "") + _unquote(value)
        if not word.strip():
            continue
        (q.not_match if negate else q.match).append(_fts_string(word))
    return q


def sql(q: Query, limit: int) -> tuple[str, list[Any]]:
    """The SELECT of the matching messages' ids, newest first, at most ``limit + 1`` of them."""
    where = list(q.where)
    params = list(q.params)
    if q.match:
        expr = " AND ".join(q.match)
        if q.not_match:
            expr = f"({expr}) NOT ({' OR '.join(q.not_match)})"
        where.insert(0, "id IN (SELECT rowid FROM mail_fts WHERE mail_fts MATCH ?)")
        params.insert(0, expr)
    elif q.not_match:
        where.insert(0, "id NOT IN (SELECT rowid FROM mail_fts WHERE mail_fts MATCH ?)")
        params.insert(0, " OR ".join(q.not_match))
    clause = " AND ".join(where) if where else "1"
    text = (
        f"SELECT id FROM mail_messages WHERE {clause} "
        "ORDER BY coalesce(date, internal_date) DESC, id DESC LIMIT ?"
    )
    return text, [*params, limit + 1]
