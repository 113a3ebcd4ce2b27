"""Stopping native work early: one process-wide stop flag that llama.cpp and the vision encoder read.

Python runs a signal handler only when the main thread is back in the interpreter, and a native
call does not come back until it is done: the vision encoder takes 10-20 s on a CPU, a prompt's
evaluation seconds, the model load a few. So a stop (Ctrl-C, SIGTERM, a closed stdout) is also a
byte in native memory, set at once by ``kvl_cli.signals``' watcher thread, and read by native code:

* prompt evaluation and generation (``loader.StoppableContext``): llama.cpp's abort callback, asked
  between graph nodes. The callback is the C library's ``strlen`` on a two-byte buffer (one byte:
  0 = go on, anything else = stop; then a NUL), so it runs with no Python, no GIL and no cost. An
  aborted decode removes the cells it wrote and returns 2; kvl raises ``KeyboardInterrupt`` for
  it, as Python does for Ctrl-C, and the scheduler ends the answers as interrupted, text kept.
* the vision encoder (``encoder_eval_callback``): libmtmd has no abort callback, but it takes the
  graph scheduler's eval callback. Asked for every few nodes, it makes the scheduler compute the
  graph in segments and return to it between them; "stop" after a segment skips the rest. It is
  Python, so the encoder runs off the main thread (``run_native``), where no signal handler runs
  inside it; its half-made output is never used.
* the load (``run_native(..., abandon=True)``): llama.cpp's model load cannot be stopped from
  outside, so the CLI loads on a helper thread and stops waiting for it; the process then exits
  without freeing what that thread is still making (``abandoned``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import Terminated
from . import native
from .native import native_callback

T = TypeVar("T")
OUTPUT_FAILED = getattr(signal, "SIGPIPE", 13)  # the stop's reason when stdout cannot be written
SEGMENT_NODES = 8  # the vision encoder's graph is computed this many nodes at a time (tens of ms on a CPU)

_flag = ctypes.create_string_buffer(2)  # [stop byte, NUL]: strlen() is 0 (go on) or 1 (stop)
_state: dict[str, Any] = {"reason": None, "abandoned": 0, "nodes": 0, "abort_cb": None, "eval_cb": None,
                          "raised": False}


def request(reason: int = signal.SIGINT) -> None:
    """Ask every native computation to stop (``reason``: the signal, or SIGPIPE for a closed stdout)."""
    if _state["reason"] is None:
        _state["reason"] = reason
    _flag[0] = b"x"


def requested() -> bool:
    return _flag[0] != b"\x00"


def reason() -> int | None:
    """What asked for the stop: SIGINT, SIGTERM, SIGPIPE (stdout closed); None if nothing did."""
    return _state["reason"] if requested() else None


def reset() -> None:
    """A new run (library callers): a stop asked for an earlier one does not stop this one."""
    _state["reason"] = None
    _state["raised"] = False
    _flag[0] = b"\x00"


def raised() -> bool:
    """Whether this stop was raised on the main thread already (as KeyboardInterrupt or Terminated)."""
    return bool(_state["raised"])


def note_raised() -> None:
    _state["raised"] = True


def abandoned() -> int:
    """Native calls left running on a helper thread (the process must exit without freeing them)."""
    return int(_state["abandoned"])


# -- llama.cpp's abort callback -----------------------------------------------------------------------

def abort_callback() -> Any:
    """``strlen`` as a ``ggml_abort_callback`` (``bool (*)(void *)``): same argument, and it returns
    exactly 0 or 1 on the flag buffer. None where the C library cannot be found."""
    if _state["abort_cb"] is None:
        try:
            libc = ctypes.cdll.msvcrt if os.name == "nt" else ctypes.CDLL(None)
            address = ctypes.cast(libc.strlen, ctypes.c_void_p).value
        except (OSError, AttributeError):  # pragma: no cover - every libc has strlen
            return None
        _state["abort_cb"] = native.llama().ggml_abort_callback(address)
    return _state["abort_cb"]


def flag_pointer() -> ctypes.c_void_p:
    """The flag buffer, as the abort callback's data."""
    return ctypes.cast(_flag, ctypes.c_void_p)


def raise_if_stopped() -> None:
    """After a native call failed: if a stop was requested, that is why (raise as Ctrl-C would)."""
    if requested():
        if threading.current_thread() is threading.main_thread():
            note_raised()
        raise Terminated() if reason() == signal.SIGTERM else KeyboardInterrupt()


# -- the vision encoder's eval callback -------------------------------------------------------------

@native_callback
def _on_node(tensor: Any, ask: bool, user_data: Any) -> bool:
    if ask:  # "do you want this node's result?": yes every SEGMENT_NODES nodes (a segment ends there)
        _state["nodes"] += 1
        return requested() or _state["nodes"] % SEGMENT_NODES == 0
    return not requested()  # after a segment: go on?


def encoder_eval_callback() -> Any:
    """The ``cb_eval`` for libmtmd's context params (CPU encoders: on a GPU the encoder takes well
    under a second, and segments would cost it its speed)."""
    if _state["eval_cb"] is None:
        _state["eval_cb"] = native.llama().ggml_backend_sched_eval_callback(_on_node)
    return _state["eval_cb"]


# -- native calls off the main thread ---------------------------------------------------------------

def run_native(fn: Callable[..., T], *args: Any, abandon: bool = False) -> T:
    """``fn(*args)``, with the main thread free to take Ctrl-C at once.

    On the main thread, ``fn`` runs on a helper thread while the main thread waits in short waits
    (signals are taken between them). On Ctrl-C or SIGTERM the stop is requested; then either the helper is
    waited for (it stops at the native side's next check: ``fn`` must honour the flag), or, with
    ``abandon``, left running and counted (the caller exits the process). Other threads call ``fn``
    directly.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    outcome: list[tuple[bool, Any]] = []
    done = threading.Event()

    def target() -> None:
        try:
            outcome.append((True, fn(*args)))
        except BaseException as exc:  # noqa: B036 - handed to the waiting thread as is
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=target, name="kvl-native", daemon=True).start()
    try:
        while not done.wait(0.1):  # short waits: signals are taken between them on every platform
            pass
    except BaseException as exc:
        request(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
        if abandon:
            _state["abandoned"] += 1
        else:
            _wait_out(done)
        raise
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def _wait_out(done: threading.Event) -> None:
    """Wait for a stopped native call to return (a second Ctrl-C does not abandon it: the main thread
    would free what it still uses)."""
    while not done.is_set():
        try:
            done.wait(0.1)
        except KeyboardInterrupt:
            continue
