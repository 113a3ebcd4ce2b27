"""How many bytes kvl reads from one input, and reading that never holds more.

Every input that is read whole (an image file, stdin, a pipe or device such as ``/dev/zero``, a
URL) is read in chunks and refused as *oversized* as soon as it passes the limit: at most the
limit plus one chunk is ever in memory. A regular file larger than the limit is refused from its
size alone, unread. The limit is ``KVL_MAX_INPUT_BYTES`` (``500M``, ``1G``, ``2.5G``: decimal
units, as ``KVL_CACHE_SIZE``), 256 MB by default: far above any photo or scan a vision model reads
(the model sees at most a few megapixels), far below what would hurt a machine. Videos are not
read whole (they are decoded as a stream from their file) and have no such limit.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import IO

from .cache import parse_size
from .errors import InputError, UsageError

DEFAULT_MAX_INPUT_BYTES = 256 * 1000**2
CHUNK = 1 << 20
ENV = "KVL_MAX_INPUT_BYTES"


def max_input_bytes() -> int:
    """The limit: ``KVL_MAX_INPUT_BYTES``, else 256 MB. A value that is not a size is a usage error."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return DEFAULT_MAX_INPUT_BYTES
    try:
        limit = parse_size(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise UsageError(f"{ENV}={value!r} is not a size",
                         hint=f"set it like 512M or 2G (default {human(DEFAULT_MAX_INPUT_BYTES)})")
    return limit


def human(n: int) -> str:
    """Bytes in the units ``KVL_MAX_INPUT_BYTES`` takes: 256 MB, 1.5 GB, 900 kB."""
    for unit, size in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def oversized(label: str, limit: int) -> InputError:
    bigger = next((f"{g}G" for g in (1, 4, 16, 64, 256) if g * 1000**3 > limit), "1T")
    return InputError(f"{label}: oversized: more than {human(limit)}, kvl's limit for one input",
                      hint=f"raise it if you trust the input, e.g. {ENV}={bigger}")


class DeadlineError(Exception):
    """``read_limited`` passed its deadline (the caller says what took too long)."""


def read_limited(stream: IO[bytes], label: str, limit: int | None = None, *, deadline: float | None = None) -> bytes:
    """Everything ``stream`` gives, read in chunks; InputError "oversized" once it passes ``limit``
    (never more than the limit and one chunk in memory). ``deadline`` (``time.monotonic()``): reads
    return what one receive brought, and DeadlineError once it has passed (a peer that trickles)."""
    limit = max_input_bytes() if limit is None else limit
    read = getattr(stream, "read1", stream.read) if deadline is not None else stream.read
    buf = bytearray()
    while True:
        chunk = read(min(CHUNK, limit + 1 - len(buf)))
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineError(label)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise oversized(label, limit)


def is_regular(path: Path) -> bool:
    """A regular file (after symlinks): can be read again and has a size. Pipes, FIFOs, devices,
    sockets and ``/dev/fd/N`` of a process substitution are not: they are read once."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def read_file(path: Path, label: str, limit: int | None = None) -> bytes:
    """A file's bytes within the limit: a regular file over it is refused from its size, unread;
    anything else (a pipe, ``/dev/zero``) is read until it passes the limit."""
    limit = max_input_bytes() if limit is None else limit
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise InputError(f"{label}: is a directory", hint="give a file")
            if stat.S_ISREG(st.st_mode) and st.st_size > limit:
                raise oversized(label, limit)
            return read_limited(f, label, limit)
    except IsADirectoryError:
        raise InputError(f"{label}: is a directory", hint="give a file") from None
    except FileNotFoundError:
        raise InputError(f"{label}: file not found", hint="check the path") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read ({exc.strerror or exc})", hint="check the file's permissions") from None
