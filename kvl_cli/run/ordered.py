"""Results in input order, whatever order they finish in: one emitter for batches and video scenes.

Several inputs are worked on at once (CPU workers, GPU sequences), but what a person or a script
reads follows the inputs' order. The input at the head of the order streams live; the others are
buffered and replayed when their turn comes. Inputs that fail before they reach the engine take
their place in the order too. On Ctrl-C, SIGTERM or an error, everything finished is still written.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from ..engine import stop
from ..engine.types import Answerer, AnyEvent, DoneEvent, Event, FailedEvent, PhaseEvent, Request, Result, TextEvent
from ..errors import Interrupted, KvlError, OutputClosed, OutputError
from ..signals import STOP_SIGNALS

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


def run_ordered(engine: Answerer, requests: Iterator[tuple[int, Request]], emitter: OrderedEmitter,
                parallel: int | None = None) -> None:
    """Run ``(position, request)`` pairs through the engine, writing through ``emitter`` in order.

    Raises ``Interrupted`` on Ctrl-C or SIGTERM (or when an answer was cut by one), after writing
    what finished. An input that fails once a stop was asked for failed because of it (its native
    work was stopped): it is left unwritten, like one that never started, so a resumed batch runs
    it again. When stdout cannot be written, nothing more is tried.
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
                interrupted = _route(emitter, order[index], ev) or interrupted
        except (OutputError, OutputClosed):
            raise
        except BaseException:
            emitter.flush()
            raise
        emitter.flush()
    except KeyboardInterrupt:
        raise Interrupted() from None
    if interrupted or stop.reason() in STOP_SIGNALS:  # the workers took the Ctrl-C: it ended their run
        raise Interrupted()


def _route(emitter: OrderedEmitter, pos: int, ev: AnyEvent) -> bool:
    """Hand one engine event to the emitter; True when it ends an input as interrupted."""
    if isinstance(ev, FailedEvent):
        if stop.reason() in STOP_SIGNALS:
            emitter.settle(pos, None)
            return True
        emitter.settle(pos, ev.error)
    elif isinstance(ev, DoneEvent):
        emitter.settle(pos, ev.result)
        return ev.result.interrupted
    elif isinstance(ev, (PhaseEvent, TextEvent)):
        emitter.event(pos, ev)
    return False
