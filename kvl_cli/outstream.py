"""stdout, checked: a write or flush that fails becomes a typed error, and the run stops.

* The reader went away (EPIPE: ``kvl caption … | head -n 1``): ``OutputClosed``, exit 141, nothing
  said (the shell's code for a process killed by SIGPIPE; nobody is left to read a message).
* Anything else (a full disk, a quota, an I/O error): ``OutputError``, a disk error, exit 7, one
  line on stderr. Each JSON record is written whole and flushed, so the records before the failure
  are whole lines and ``--skip-done`` resumes from them. Where stdout is a regular file, the part of
  the record that did reach the disk is cut off again (the file is truncated back to the end of the
  last flushed write), so the file holds whole records only.

Either way the engine is asked to stop (nothing more can be written), and the stream refuses every
later write with the same error, so nothing after the failure writes part of anything.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import select
import stat
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
        self._fd = _regular_file_fd(stream)
        self._raw = _unbuffered_raw(stream)
        self._flushed_to = _end_of_writes(self._fd)
        # what the file held before kvl wrote a byte: never cut into (``1<> FILE`` writes inside a file)
        self._size_at_start = _size(self._fd)

    def write(self, text: str) -> int:
        self._refuse_if_failed()
        try:
            if self._raw is not None:
                return self._write_all(text)
            return self._stream.write(text)
        except OSError as exc:
            raise self._failed(exc) from None

    def _write_all(self, text: str) -> int:
        """Write ``text`` to the raw file to the last byte: unbuffered (``PYTHONUNBUFFERED``, ``-u``),
        a text stream drops what a short write (a disk filling up) left over, without a word."""
        assert self._raw is not None
        self._stream.flush()
        data = memoryview(text.encode(getattr(self._stream, "encoding", None) or "utf-8",
                                      getattr(self._stream, "errors", None) or "strict"))
        while data:
            n = self._raw.write(data)
            if n is None:  # a non-blocking descriptor that is full: wait until it takes more
                select.select([], [self._raw], [])
                continue
            data = data[n:]
        return len(text)

    def flush(self) -> None:
        self._refuse_if_failed()
        try:
            self._stream.flush()
        except OSError as exc:
            raise self._failed(exc) from None
        self._flushed_to = _end_of_writes(self._fd)

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
        _cut_back(self._fd, self._flushed_to, self._size_at_start)
        stop.request(stop.OUTPUT_FAILED)  # whatever is still being worked on cannot be written
        return self.failure


def _regular_file_fd(stream: IO[str]) -> int | None:
    """The descriptor under ``stream`` when it is a regular file (not a pipe, a terminal or /dev/full)."""
    try:
        fd = stream.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (AttributeError, ValueError, OSError):
        return None


def _unbuffered_raw(stream: IO[str]) -> io.RawIOBase | None:
    """The raw file under a text stream that has no buffer between them (``python -u``)."""
    raw = getattr(stream, "buffer", None)
    return raw if isinstance(raw, io.RawIOBase) else None


def _size(fd: int | None) -> int:
    try:
        return os.fstat(fd).st_size if fd is not None else 0
    except OSError:
        return 0


def _end_of_writes(fd: int | None) -> int | None:
    """Where the next write to ``fd`` lands: the end of the file when it was opened to append (``>>``)."""
    if fd is None:
        return None
    try:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return os.fstat(fd).st_size
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return None


def _cut_back(fd: int | None, size: int | None, size_at_start: int) -> None:
    """Truncate the file to ``size``: what part of a record reached it before the failure goes again
    (not below what the file held before kvl wrote: ``1<> FILE`` writes inside it). The descriptor
    then points at /dev/null, so that what is still buffered (written again at the interpreter's
    exit, into the room the truncation freed) cannot cut a record into the file again."""
    if fd is None or size is None:
        return
    try:
        if os.fstat(fd).st_size > size >= size_at_start:
            os.ftruncate(fd, size)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except OSError:
        pass  # the part stays; --skip-done starts a new line after it


def checked(stream: IO[str], name: str = "stdout") -> IO[str]:
    """``stream`` wrapped (once) in a ``CheckedOutput``."""
    if isinstance(stream, CheckedOutput):
        return cast(IO[str], stream)
    return cast(IO[str], CheckedOutput(stream, name))
