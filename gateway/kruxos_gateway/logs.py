"""What the operator reads: log lines on stderr, and agent text made safe to show.

Log lines are concise; under systemd each line starts with its syslog priority (``<4>``). Agents
control much of what ends up in front of the operator (alert texts, inputs, capability names), so
:func:`escape` shows every character that could rewrite a terminal or a log as a visible escape; the
log formatter and every kruxosctl output go through it.
"""

from __future__ import annotations

import logging
import os
import sys
import unicodedata

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

# Categories that rewrite or hide what is shown: Cc (C0 and C1 controls, DEL: terminal escapes,
# carriage returns, forged lines), Cf (invisible format characters: bidi overrides and isolates,
# U+200E/F, U+061C, zero-width spaces, tag characters), Zl/Zp (line and paragraph separators) and Cs
# (lone surrogates, which cannot even be printed). ZWNJ and ZWJ stay: ordinary text needs them
# (Persian and Indic scripts, emoji sequences) and they can neither reorder nor hide text.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_ORDINARY = frozenset("\u200c\u200d")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def escape(text: str, keep: str = "") -> str:
    """``text`` with control, bidi and invisible format characters shown as escapes (``\\x1b``,
    ``\\u202e``, ``\\n``); every other character, backslashes included, as it is.

    ``keep`` names characters to leave alone (e.g. ``"\\n"`` to print a file line by line).
    """
    if text.isprintable():  # the common case: nothing to escape (isprintable is stricter)
        return text
    return "".join(
        _escaped(c) if c not in keep and c not in _ORDINARY and unicodedata.category(c) in _HIDDEN else c
        for c in text
    )


def error_line(prog: str, message: str, hint: str | None = None, *, kind: str | None = None) -> str:
    """``PROG: error: MESSAGE; hint: HINT``, escaped: the one line every KruxOS command dies with.

    ``kind`` names what was refused when that is not plain from the message (``config`` error,
    ``policy`` error); ``build.py`` writes the same line (``kruxos_build/errors.py``).
    """
    error = f"{kind} error" if kind else "error"
    return escape(f"{prog}: {error}: {message}" + (f"; hint: {hint}" if hint else ""))


class _OperatorFormatter(logging.Formatter):
    """One log record as the operator reads it: agent text cannot start a line of its own.

    The record's line is escaped whole, so an agent's ``\\n`` cannot start a forged record. A
    traceback keeps its lines, each escaped and indented: a record never starts with a space, so no
    traceback line can pass for one. With ``priority`` every line starts with the record's syslog
    priority, which journald reads per line (a forged ``<2>`` cannot raise a line to critical).
    """

    def __init__(self, fmt: str, *, priority: bool) -> None:
        super().__init__(fmt)
        self._priority = priority

    def format(self, record: logging.LogRecord) -> str:
        # Not Formatter.format: it would reuse an unescaped record.exc_text that another handler made.
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        lines = [escape(self.formatMessage(record))]
        if record.exc_info:
            lines += _continuation(self.formatException(record.exc_info))
        elif record.exc_text:
            lines += _continuation(record.exc_text)
        if record.stack_info:
            lines += _continuation(self.formatStack(record.stack_info))
        if self._priority:
            prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
            lines = [prefix + line for line in lines]
        return "\n".join(lines)


def _continuation(text: str) -> list[str]:
    return ["  " + escape(line) for line in text.rstrip("\n").split("\n")]


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):  # stderr is connected to the journal, which timestamps
        handler.setFormatter(_OperatorFormatter("%(name)s: %(message)s", priority=True))
    else:
        handler.setFormatter(
            _OperatorFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", priority=False)
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp logs every malformed request and dropped connection (aiohttp.server, aiohttp.websocket)
    # at DEBUG/INFO, with what the client sent; the gateway logs its own, escaped, one line each.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
