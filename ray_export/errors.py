"""Errors an export ends with: one clear line and an exit code."""

from __future__ import annotations


class ExportError(Exception):
    """A fatal export problem: one clear line and an exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ExportCancelled(ExportError):
    """The export was cancelled (cancel, Ctrl-C, SIGTERM or ``handle.cancel()``)."""

    def __init__(self, message: str = "export cancelled") -> None:
        super().__init__(message, exit_code=130)


def error_line(exc: BaseException) -> str:
    """The line that names the error (the last one of a remote traceback), at most 500 characters."""
    text = str(exc).strip().splitlines()
    return text[-1][:500] if text else ""
