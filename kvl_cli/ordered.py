"""Results in input order, whatever order they finish in: one emitter for batches and video scenes.

Several inputs are worked on at once (CPU workers, GPU sequences), but what a person or a script
reads follows the inputs' order. The input at the head of the order streams live; the others are
buffered and replayed when their turn comes. Inputs that fail before they reach the engine take
their place in the order too. On Ctrl-C or an error, everything finished is still written.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from .engine.engine import Engine
from .engine.types import DoneEvent, Event, FailedEvent, PhaseEvent, Request, Result, TextEvent
from .errors import Interrupted, KvlError

Outcome = Result | KvlError


class Sink(Protocol):
    """Where an ordered run writes: each input begins, streams its events, and ends once."""

    def begin(self, pos: int) -> None: ...

    def event(self, pos: int, ev: Event) -> None: ...

    def done(self, pos: int, outcome: Outcome) -> None: ...

    def progress(self, pos: int, ev: PhaseEvent) -> None:
        """A phase of an input that is not at the head (shown only as progress)."""


class OrderedEmitter:
    """Positions 0, 1, 2…: events and outcomes arrive for any of them, go out in order."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.head = 0
        self._begun = False
        self._buffers: dict[int, list[Event]] = {}
        self._outcomes: dict[int, Outcome | None] = {}  # None: skipped (nothing to write)

    def event(self, pos: int, ev: Event) -> None:
        if pos == self.head:
            self._begin_head()
            self.sink.event(pos, ev)
        elif isinstance(ev, PhaseEvent):
            self.sink.progress(pos, ev)
        else:
            self._buffers.setdefault(pos, []).append(ev)

    def settle(self, pos: int, outcome: Outcome | None) -> None:
        """``pos`` is finished (``None``: it has nothing to write); write whatever is now in order."""
        self._outcomes[pos] = outcome
        while self.head in self._outcomes:
            self._write(self.head, self._outcomes.pop(self.head))
            self.head += 1
            self._begun = False
            if self._buffers.get(self.head):  # already running: it streams live from now on
                self._begin_head()

    def flush(self) -> None:
        """Interrupted or failed: write every finished input, in order, gaps and all."""
        for pos in sorted(self._outcomes):
            self.head = pos
            self._begun = False
            self._write(pos, self._outcomes.pop(pos))

    def _begin_head(self) -> None:
        if not self._begun:
            self._begun = True
            self.sink.begin(self.head)
            for ev in self._buffers.pop(self.head, []):
                self.sink.event(self.head, ev)

    def _write(self, pos: int, outcome: Outcome | None) -> None:
        if outcome is None:
            self._buffers.pop(pos, None)
            return
        if isinstance(outcome, Result):
            self._begin_head()
        self._buffers.pop(pos, None)
        self.sink.done(pos, outcome)


def run_ordered(engine: Engine, requests: Iterator[tuple[int, Request]], emitter: OrderedEmitter,
                parallel: int | None = None) -> None:
    """Run ``(position, request)`` pairs through the engine, writing through ``emitter`` in order.

    Raises ``Interrupted`` on Ctrl-C (or when an answer was cut by it), after writing what finished.
    """
    order: list[int] = []  # the engine's request index -> position

    def numbered() -> Iterator[Request]:
        for pos, request in requests:
            order.append(pos)
            yield request

    interrupted = False
    try:
        try:
            for index, ev in engine.generate_many(numbered(), parallel):
                pos = order[index]
                if isinstance(ev, FailedEvent):
                    emitter.settle(pos, ev.error)
                elif isinstance(ev, DoneEvent):
                    interrupted = interrupted or ev.result.interrupted
                    emitter.settle(pos, ev.result)
                elif isinstance(ev, (PhaseEvent, TextEvent)):
                    emitter.event(pos, ev)
        finally:
            emitter.flush()
    except KeyboardInterrupt:
        raise Interrupted() from None
    if interrupted:
        raise Interrupted()
