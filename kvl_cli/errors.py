"""Errors a user can cause, each with a sentence that says what to do, and their exit codes.

The CLI maps these to exit codes in one place (``cli.main``); library callers catch ``KvlError``.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # unexpected failure (a bug): rerun with --debug and report it
    USAGE = 2  # bad option or argument (click uses 2 as well)
    INPUT = 3  # no usable input: missing, unreadable, corrupt or unsupported file
    MODEL = 4  # model problem: not found, not a GGUF model, projector missing or mismatched
    PARTIAL = 5  # a batch finished but some inputs failed (each one reported on stderr)
    NETWORK = 6  # download failed: hub unreachable, 401/403/404, offline, interrupted
    DISK = 7  # not enough disk space, or a file could not be written
    CONTEXT = 8  # the prompt does not fit the context window
    INTERRUPTED = 130  # Ctrl-C: what was already printed or written is kept
    OUTPUT_CLOSED = 141  # stdout's reader went away (`kvl … | head`): stopped at once, quietly (128 + SIGPIPE)
    TERMINATED = 143  # SIGTERM: stopped like Ctrl-C, what was written is kept (128 + SIGTERM)


def batch_exit_code(failures: list[int], succeeded: int) -> int:
    """A batch's exit code: 0 when nothing failed, 5 when some inputs failed and others succeeded,
    else the first failure's own code (a missing file 3, a prompt too long 8)."""
    if not failures:
        return int(ExitCode.OK)
    return int(ExitCode.PARTIAL) if succeeded else int(failures[0])


class KvlError(Exception):
    """An error with a message meant for the user and an exit code."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(KvlError):
    exit_code = ExitCode.USAGE


class InputError(KvlError):
    exit_code = ExitCode.INPUT


class ModelError(KvlError):
    exit_code = ExitCode.MODEL


class NetworkError(KvlError):
    exit_code = ExitCode.NETWORK


class DiskError(KvlError):
    exit_code = ExitCode.DISK


class ContextError(KvlError):
    exit_code = ExitCode.CONTEXT


class EngineError(KvlError):
    """The native engine refused or failed an operation."""

    exit_code = ExitCode.ERROR


class OutputError(DiskError):
    """Writing to stdout failed (a full disk, an I/O error): what was written before is whole lines."""


class OutputClosed(KvlError):
    """stdout's reader went away (a closed pipe): nothing more can be said there."""

    exit_code = ExitCode.OUTPUT_CLOSED


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that it stops kvl the same way."""


class Interrupted(KvlError):
    """Ctrl-C (or SIGTERM): the run stopped; what was written stays."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str = "interrupted") -> None:
        super().__init__(message)
