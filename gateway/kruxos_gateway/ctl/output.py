"""What ``kruxosctl`` prints, shared by its command modules: one-line errors and aligned tables.

Every cell and message is escaped (``logs.escape``): agents choose much of the text an operator
reads here, and must not be able to move the cursor, reverse a line or forge one.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..logs import escape


class CtlError(Exception):
    """A failure to report as one line (``logs.error_line``): what failed, and a hint for what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` (the first is the header) in aligned columns, every cell escaped."""
    escaped = [[escape(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in escaped) for i in range(len(escaped[0]))]
    for row in escaped:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
