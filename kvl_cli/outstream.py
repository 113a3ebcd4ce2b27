"""stdout, checked: a write or flush that fails becomes a typed error, and the run stops.

* The reader went away (EPIPE: ``kvl caption … | head -n 1``): ``OutputClosed``, exit 141, nothing
  said (the shell's code for a process killed by SIGPIPE; nobody is left to read a message).
* Anything else (a full disk, a quota, an I/O error): ``OutputError``, a disk error, exit 7, one
  line on stderr. Each JSON record is written whole and flushed, so the records before the failure
  are whole lines and ``--skip-done`` resumes from them.

Either way the engine is asked to stop (nothing more can be written), and the stream refuses every
later write with the same error, so nothing after the failure writes part of anything.
"""

from __future__ import annotations

import errno
from typing import IO, Any, cast

from .engine import stop
from .errors import KvlError, OutputClosed, OutputError

RESUME_HINT = "free some space and run it again; a --json batch resumes with --skip-done OUT.jsonl"


def output_failure(exc: OSError, name: str = "stdout") -> KvlError:
    """The typed error for a failed write to ``name``."""
    if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
        return OutputClosed(f"{name} was closed")
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutputError(f"cannot write to {name}: {reason}", hint=RESUME_HINT)
    return OutputError(f"cannot write to {name}: {reason}", hint="check the disk or the file it goes to")


class CheckedOutput:
    """A text stream whose failed writes and flushes raise ``OutputClosed`` or ``OutputError``."""

    def __init__(self, stream: IO[str], name: str = "stdout") -> None:
        self._stream = stream
        self._name = name
        self.failure: KvlError | None = None

    def write(self, text: str) -> int:
        self._refuse_if_failed()
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise self._failed(exc) from None

    def flush(self) -> None:
        self._refuse_if_failed()
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._failed(exc) from None

    def isatty(self) -> bool:
        try:
            return self._stream.isatty()
        except (ValueError, OSError):
            return False

    def close(self) -> None:
        """Not ours to close (the process's stdout)."""

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, buffer... as the wrapped stream has them
        return getattr(self._stream, name)

    def _refuse_if_failed(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _failed(self, exc: OSError) -> KvlError:
        self.failure = output_failure(exc, self._name)
        stop.request(stop.OUTPUT_FAILED)  # whatever is still being worked on cannot be written
        return self.failure


def checked(stream: IO[str], name: str = "stdout") -> IO[str]:
    """``stream`` wrapped (once) in a ``CheckedOutput``."""
    if isinstance(stream, CheckedOutput):
        return cast(IO[str], stream)
    return cast(IO[str], CheckedOutput(stream, name))
