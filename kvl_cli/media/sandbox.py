"""Untrusted images and videos are decoded in a separate process, so a decoder crash fails one input.

Pillow's C decoders and OpenCV's FFmpeg parse bytes that anyone can craft. A segfault, an abort
or a runaway allocation there would kill kvl with the whole batch. kvl therefore runs them in one
long-lived helper process (``decode_worker``), started on first use and restarted after a failure:

* a crash (a signal, an exit) while it works on an input is that input's error, exit 3
  ("the decoder crashed on this file"); the next input gets a fresh helper;
* its memory is capped (``RLIMIT_DATA``: 1 GB + 8 bytes per allowed pixel + twice the input size
  limit, 2.2 GB by default), so a bomb ends in MemoryError, not in the kernel's OOM killer;
* an image has 60 s to decode (a 90-megapixel PNG needs about 2 s); a video, which is decoded as
  a stream and may be hours long, has no time limit;
* it ignores Ctrl-C (kvl answers it) and exits when kvl does (its stdin closes).

Messages are a little header (JSON) and raw bytes, never pickles: what a subverted decoder sends
back is checked data, not code. Measured cost (this machine): starting the helper 0.07 s for
images, 0.3 s more the first time a video is opened (OpenCV's import); per image 1-3 ms to move
its bytes and pixels, against seconds to tens of seconds for the vision encoder. ``KVL_SANDBOX=0``
decodes in kvl's own process instead (the default on Windows, which has no ``select`` on pipes).
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..environment import env_flag
from ..errors import InputError, KvlError, UsageError

IMAGE_TIMEOUT_S = 60.0
VIDEO_TIMEOUT_S: float | None = None  # a video is decoded as a stream, for as long as it lasts
_FRAME = struct.Struct("<IQ")  # header length, payload length
MAX_HEADER = 1 << 20
Header = dict[str, Any]


def enabled() -> bool:
    """Decode in the helper process (``KVL_SANDBOX``, on by default except on Windows)."""
    return env_flag("KVL_SANDBOX", default=os.name != "nt")


def memory_cap(pixels: int, byte_limit: int) -> int:
    return 1000**3 + 8 * pixels + 2 * byte_limit


def where(path: Path) -> Header:
    """A path as the helper should open it: as given, from kvl's working directory (so that its
    messages name the file as the user did), and absolute in case that directory is gone."""
    try:
        cwd: str | None = os.getcwd()
    except OSError:  # kvl's own directory was deleted: only absolute paths mean anything
        cwd = None
    return {"path": str(path), "cwd": cwd, "abspath": os.path.join(cwd, path) if cwd else str(path)}


# ---- framing (both sides) -------------------------------------------------------------------------


def write_message(out: BinaryIO, header: Header, payload: bytes | memoryview = b"") -> None:
    head = json.dumps(header).encode("utf-8")
    out.write(_FRAME.pack(len(head), len(payload)) + head)
    if payload:
        out.write(payload)
    out.flush()


def read_message(inp: BinaryIO) -> tuple[Header, bytes] | None:
    """The next message from a trusted writer (the worker's side); None at end of input."""
    raw = inp.read(_FRAME.size)
    if len(raw) < _FRAME.size:
        return None
    n_head, n_payload = _FRAME.unpack(raw)
    header = json.loads(inp.read(n_head))
    return header, inp.read(n_payload)


class Broken(Exception):
    """The helper died, hung or said something it should not: its input's error, and a new helper."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- the parent's side -----------------------------------------------------------------------------


@dataclass
class Decoder:
    """One helper process; ``request`` sends one operation and collects its replies."""

    argv: list[str] = field(default_factory=lambda: [sys.executable, "-m", "kvl_cli.media.decode_worker"])
    proc: subprocess.Popen[bytes] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    starts: int = 0
    cap: int = 0

    def prestart(self, cap: int) -> None:
        """Start the helper now (it imports Pillow while kvl does other things)."""
        with self.lock:
            self._start(cap)

    def _start(self, cap: int) -> subprocess.Popen[bytes]:
        if self.proc is not None and self.proc.poll() is None and self.cap == cap:
            return self.proc
        self.close()
        self.cap = cap
        try:
            quiet = not env_flag("KVL_DEBUG")  # with KVL_DEBUG=1 the helper's own tracebacks show
        except UsageError:
            quiet = True
        try:
            self.proc = subprocess.Popen([*self.argv, str(cap)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL if quiet else None, close_fds=True)
        except OSError as exc:
            raise KvlError(f"cannot start kvl's decoder process ({exc.strerror or exc})",
                           hint="set KVL_SANDBOX=0 to decode in kvl's own process") from None
        self.starts += 1
        _widen_pipe(self.proc.stdout.fileno())  # type: ignore[union-attr]
        return self.proc

    def request(self, label: str, op: str, header: Header, payload: bytes = b"", *, cap: int,
                timeout: float | None, max_payload: int) -> list[tuple[Header, bytes]]:
        """Replies to one operation, up to the one that ends it (``done`` or ``error``). Raises the
        input's InputError (or UsageError) as the helper reported it, or InputError when it broke."""
        with self.lock:
            proc = self._start(cap)
            try:
                write_message(proc.stdin, {"op": op, **header}, payload)  # type: ignore[arg-type]
                replies = self._collect(proc, timeout, max_payload)
            except (Broken, OSError) as exc:
                raise self._broken(label, op, exc, timeout) from None
            except BaseException:
                self.close()  # Ctrl-C mid-message: the stream is out of step
                raise
        last = replies[-1][0]
        if "error" in last:
            cls = UsageError if last.get("kind") == "usage" else InputError
            raise cls(str(last["error"]), hint=last.get("hint"))
        return replies

    def _collect(self, proc: subprocess.Popen[bytes], timeout: float | None,
                 max_payload: int) -> list[tuple[Header, bytes]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        replies = []
        while True:
            n_head, n_payload = _FRAME.unpack(_read_exact(fd, _FRAME.size, deadline))
            if n_head > MAX_HEADER or n_payload > max_payload:
                raise Broken(f"a reply of {n_payload} bytes")
            try:
                header = json.loads(_read_exact(fd, n_head, deadline))
            except ValueError:
                raise Broken("an unreadable reply") from None
            if not isinstance(header, dict):
                raise Broken("an unreadable reply")
            replies.append((header, _read_exact(fd, n_payload, deadline)))
            if "done" in header or "error" in header:
                return replies

    def _broken(self, label: str, op: str, exc: BaseException, timeout: float | None) -> InputError:
        proc, self.proc = self.proc, None
        what = "video" if op.startswith("video") else "document" if op.startswith("doc.") else "image"
        reason = exc.reason if isinstance(exc, Broken) else str(exc)
        if proc is not None:
            if reason == "timeout":
                proc.kill()
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if reason == "timeout":
                return InputError(f"{label}: decoding the {what} took more than {timeout:g} s; stopped",
                                  hint="the file may be damaged or hostile; convert it with another tool")
            if code < 0:
                reason = _signal_name(-code)
            elif code:
                reason = f"exit status {code}"
        return InputError(f"{label}: the {what} decoder crashed on this file ({reason})",
                          hint="the file is damaged or hostile; the other inputs are not affected")

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


PIPE_BYTES = 1 << 20  # Linux's default pipe-max-size


def _widen_pipe(fd: int) -> None:
    """A 1 MB pipe for the helper's replies instead of 64 kB: a rendered page (6 MB at 150 dpi) then
    crosses in a few wake-ups, not a hundred (on two busy cores, that halved a page's hand-over).
    Best effort: elsewhere, or over a lower system limit, the pipe stays as it is."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (ImportError, OSError):
        pass


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    """``n`` bytes from ``fd``, read straight into one buffer (a page's pixels are megabytes: no
    pieces joined after)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise Broken("timeout")
        k = os.readv(fd, [view[got:]]) if hasattr(os, "readv") else _read_into(fd, view[got:])
        if not k:
            raise Broken("it stopped")
        got += k
    return buf  # type: ignore[return-value]  # a bytearray: bytes to every reader of it


def _read_into(fd: int, view: memoryview) -> int:
    chunk = os.read(fd, min(len(view), PIPE_BYTES))
    view[:len(chunk)] = chunk
    return len(chunk)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


_decoder: Decoder | None = None


def decoder() -> Decoder:
    """The process's helper (one, reused by every decode; closed when kvl exits)."""
    global _decoder
    if _decoder is None:
        import atexit

        _decoder = Decoder()
        atexit.register(_decoder.close)
    return _decoder
