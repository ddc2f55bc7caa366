"""Timestamps as the gateway writes them: ISO 8601 UTC with milliseconds (truncated) and ``Z``.

A leaf module: the store's records and the file operations (which the file worker runs without the
store) write the same text.
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso_ms(when: datetime) -> str:
    """``when`` (a UTC datetime) as ``2026-12-02T14:05:09.123Z``."""
    if when.year < 1000:  # strftime's %Y is not zero-padded; keep its exact text for such years
        return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    # The same text as strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" in half the time (every invocation
    # formats one or two of these); %-formatting is also faster here than an f-string.
    return "%d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        when.year,
        when.month,
        when.day,
        when.hour,
        when.minute,
        when.second,
        when.microsecond // 1000,
    )


def iso_ms_of(timestamp: float) -> str:
    """A POSIX timestamp (``st_mtime``) as :func:`iso_ms` writes it."""
    return iso_ms(datetime.fromtimestamp(timestamp, UTC))
