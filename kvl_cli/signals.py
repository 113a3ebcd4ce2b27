"""Signals for the length of one ``kvl`` command: SIGTERM stops kvl as Ctrl-C does, and either one
stops native work at once.

* SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``) where Python raises KeyboardInterrupt for
  Ctrl-C, so a batch stops the same way: what was written stays, and kvl says "terminated" (exit
  143; Ctrl-C: "interrupted", 130).
* Python runs those handlers only when the main thread is back in the interpreter; a vision
  encoder or a prompt evaluation in native code would keep it for seconds. ``signal.set_wakeup_fd``
  has the C-level handler write the signal's number to a pipe the moment it arrives; a watcher
  thread reads it and sets the engine's stop flag (``engine.stop``), which llama.cpp and the
  encoder read themselves.

A signal that was ignored when kvl started (``nohup``, a background job) stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from .engine import stop
from .errors import Terminated

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    stop.request(signal.SIGTERM)
    raise Terminated()


def _watch(read_fd: int) -> None:
    """Set the stop flag for each SIGINT or SIGTERM written to the wakeup pipe; end when it closes."""
    try:
        while True:
            data = os.read(read_fd, 64)
            if not data:
                return
            for signum in data:
                if signum in STOP_SIGNALS:
                    stop.request(signum)
    finally:
        os.close(read_fd)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Install the SIGTERM handler and the watcher (main thread only), and restore what was there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    old_term = signal.getsignal(signal.SIGTERM)
    if old_term is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, _on_sigterm)
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="kvl-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        if old_term is not signal.SIG_IGN:
            signal.signal(signal.SIGTERM, old_term if old_term is not None else signal.SIG_DFL)
        os.close(write_fd)  # the watcher reads what is left, then end-of-file, and closes its end
        watcher.join(1.0)
