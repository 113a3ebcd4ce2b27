"""Progress on the driver: inputs done, failed and running, throughput, and what each worker does.

Workers post their state (loading model, encoding image, reading prompt, thinking… and on what)
to a small actor, the board; the driver counts finished inputs from the rows it receives and asks
the board for the rest once a second. On a terminal that is a live view on stderr; in a pipe, one
line every ``PLAIN_EVERY_S`` seconds and a last one at the end.
"""

from __future__ import annotations

import threading
import time
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from ..render.base import fmt_seconds

PLAIN_EVERY_S = 30.0
SHOWN_WORKERS = 8


class Board:
    """The workers' states (a Ray actor with no CPU of its own)."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[str, float]] = {}

    def post(self, worker: str, state: str) -> None:
        self.states[worker] = (state, time.time())

    def snapshot(self) -> dict[str, tuple[str, float]]:
        return dict(self.states)


class Progress:
    def __init__(self, err: IO[str], is_tty: bool, unit: str, total: int, board: Any = None) -> None:
        self.err, self.is_tty, self.unit, self.total, self.board = err, is_tty, unit, total, board
        self.done = self.failed = 0
        self.started = time.monotonic()
        self.states: dict[str, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._last_plain = time.monotonic()

    def add(self, ok: bool) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1

    def rate(self) -> float:
        return (self.done + self.failed) / max(1e-9, time.monotonic() - self.started) * 60

    def running(self) -> int:
        return sum(1 for state, _ in self.states.values() if state not in ("idle", ""))

    def summary(self) -> str:
        total = f" of {self.total}" if self.total else ""
        return (f"{self.done} {self.unit} done, {self.failed} failed{total}, {self.running()} running · "
                f"{self.rate():.1f}/min · {fmt_seconds(time.monotonic() - self.started)}")

    def view(self) -> Group:
        now = time.time()
        lines = [Text(self.summary(), style="cyan")]
        for worker, (state, since) in sorted(self.states.items())[:SHOWN_WORKERS]:
            lines.append(Text(f"  {worker}  {state} · {fmt_seconds(max(0.0, now - since))}", style="dim"))
        if len(self.states) > SHOWN_WORKERS:
            lines.append(Text(f"  … {len(self.states) - SHOWN_WORKERS} more workers", style="dim"))
        return Group(*lines)

    def start(self) -> None:
        if self.is_tty:
            self._live = Live(self.view(), console=Console(file=self.err, stderr=True), transient=True,
                              refresh_per_second=4)
            self._live.start()
        self._thread = threading.Thread(target=self._poll, name="kvl-ray-progress", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(1.0):
            if self.board is not None:
                try:
                    import ray

                    self.states = ray.get(self.board.snapshot.remote(), timeout=5)
                except Exception:  # noqa: BLE001 - the board is only for show
                    pass
            if self._live is not None:
                self._live.update(self.view())
            elif time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
                self._last_plain = time.monotonic()
                self.err.write(f"kvl: {self.summary()}\n")
                self.err.flush()

    def note(self, message: str) -> None:
        if self._live is not None:
            self._live.console.print(Text(f"kvl: {message}", style="yellow"))
        else:
            self.err.write(f"kvl: {message}\n")
            self.err.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._live is not None:
            self._live.stop()
            self._live = None
        self.states = {}
        self.err.write(f"kvl: {self.summary()}\n")
        self.err.flush()
