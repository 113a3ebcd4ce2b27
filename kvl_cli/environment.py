"""The process's terminal facts in one object, and the one parser for boolean environment flags.

``Environment`` holds the streams kvl reads and writes and whether each is a terminal, decided
once (as httpie's ``Environment`` does). Commands take it from Click's context; tests build one
with their own streams instead of patching ``sys``.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, field
from typing import IO

from .errors import InputError, UsageError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")


def parse_flag(name: str, value: str) -> bool:
    """``1/true/yes/on`` → True, ``0/false/no/off`` or empty → False (any case); else a usage error."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise UsageError(f"{name}={value!r} is not a yes/no value", hint=f"set {name} to 1 or 0 (or true/false)")


def env_flag(name: str, default: bool = False) -> bool:
    """A boolean environment variable, read the same way everywhere (``KVL_REPACK``, ``KVL_DEBUG``...)."""
    value = os.environ.get(name)
    return default if value is None else parse_flag(name, value)


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False


@dataclass
class Environment:
    """Where input comes from and output goes, and what those streams are."""

    stdin: IO[bytes] = field(default_factory=lambda: _binary(sys.stdin))
    stdout: IO[str] = field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = field(default_factory=lambda: sys.stderr)
    stdin_isatty: bool | None = None  # None: asked of the stream
    stdout_isatty: bool | None = None
    stderr_isatty: bool | None = None
    no_color: bool | None = None  # None: from NO_COLOR (https://no-color.org: any non-empty value)
    _stdin_data: bytes | None = field(default=None, init=False, repr=False)
    _stdin_error: InputError | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.stdin_isatty is None:
            self.stdin_isatty = _isatty(self.stdin)
        if self.stdout_isatty is None:
            self.stdout_isatty = _isatty(self.stdout)
        if self.stderr_isatty is None:
            self.stderr_isatty = _isatty(self.stderr)
        if self.no_color is None:
            self.no_color = bool(os.environ.get("NO_COLOR"))

    def read_stdin(self) -> bytes:
        """All of stdin (an image, a list of paths, a question), read once however often it is
        asked for; empty when it is closed, InputError when it cannot be read. More than
        ``KVL_MAX_INPUT_BYTES`` is refused (InputError "oversized", every time it is asked for)
        without holding more than that."""
        from .limits import read_limited

        if self._stdin_error is not None:
            raise self._stdin_error
        if self._stdin_data is None:
            try:
                self._stdin_data = read_limited(self.stdin, "stdin")
            except ValueError:  # closed
                self._stdin_data = b""
            except OSError as exc:  # opened for writing only (`kvl caption 0>file`), a socket gone bad
                self._stdin_error = InputError(f"stdin: cannot read it ({exc.strerror or exc})",
                                               hint="give the inputs as arguments, or pipe them in")
                raise self._stdin_error from None
            except InputError as exc:
                self._stdin_error = exc
                raise
        return self._stdin_data

    def read_stdin_text(self) -> str:
        return self.read_stdin().decode("utf-8", errors="replace")


def _binary(stream: object) -> IO[bytes]:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        return buffer  # type: ignore[no-any-return]
    return io.BytesIO(b"")
