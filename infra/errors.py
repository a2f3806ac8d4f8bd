"""Errors that ar reports to the user as one line, with the exit code they deserve."""
from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_INTERRUPTED = 130


class ArError(Exception):
    """An expected failure: its message is shown as is, no traceback."""

    exit_code = EXIT_ERROR


class UsageError(ArError):
    exit_code = EXIT_USAGE
