"""The one error the builder's CLI reports: a line saying what failed, and a hint saying what to do."""

from __future__ import annotations


def error_line(prog: str, message: str, hint: str | None = None) -> str:
    """``PROG: error: MESSAGE; hint: HINT``: the line every KruxOS command dies with (as the gateway's
    ``kruxos_gateway/logs.py``, which this package does not import)."""
    return f"{prog}: error: {message}" + (f"; hint: {hint}" if hint else "")


class BuildError(Exception):
    """A failure the CLI reports as one line (``error_line``, hint included) and exit status ``code``."""

    def __init__(self, message: str, *, hint: str | None = None, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code


class DescriptionError(BuildError):
    """The appliance description is unreadable or invalid (exit status 2)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, code=2)
