"""Signals for the length of one ``kvl`` command: SIGTERM stops kvl as Ctrl-C does, and either one
stops native work at once.

* SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``) where Python raises KeyboardInterrupt for
  Ctrl-C, so a batch stops the same way: what was written stays, and kvl says "terminated" (exit
  143; Ctrl-C: "interrupted", 130). Neither is raised inside a function that native code called
  (ctypes would drop it): it is delivered again once the main thread is back in kvl's code.
* Python runs those handlers only when the main thread is back in the interpreter; a vision
  encoder or a prompt evaluation in native code would keep it for seconds. ``signal.set_wakeup_fd``
  has the C-level handler write the signal's number to a pipe the moment it arrives; a watcher
  thread reads it and sets the engine's stop flag (``engine.stop``), which llama.cpp and the
  encoder read themselves.

A signal that was ignored when kvl started (``nohup``, a background job) stays ignored.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from .engine import native, stop
from .errors import Terminated

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
REDELIVER_S = 0.02
_pending: dict[str, int | None] = {"signum": None}


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    """SIGINT and SIGTERM: ask native work to stop and raise KeyboardInterrupt / Terminated, except
    inside a function that native code called (a log callback): raised there, ctypes would print it
    and drop it. The flag stops the native call, and the signal is delivered again a moment later,
    back in kvl's code, unless the main thread has raised it already (the stopped call did)."""
    stop.request(signum)
    redelivered = _pending["signum"] == signum
    _pending["signum"] = None
    if _in_native_callback(frame):
        _pending["signum"] = signum
        threading.Timer(REDELIVER_S, _thread.interrupt_main, (signum,)).start()
        return
    if redelivered and stop.raised():
        return
    stop.note_raised()
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _in_native_callback(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code in native.CALLBACK_CODES:
            return True
        frame = frame.f_back
    return False


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
    old = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum, handler in old.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, _on_stop_signal)
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="kvl-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for signum, handler in old.items():
            if handler is not signal.SIG_IGN:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        os.close(write_fd)  # the watcher reads what is left, then end-of-file, and closes its end
        watcher.join(1.0)
