"""A renderer that also hands each finished input's record to sinks (files beside the inputs, …).

Whatever a command shows is its own renderer's; ``RecordTee`` wraps that renderer and, when an
input ends, gives its result to every ``RecordSink`` first. A sink that cannot keep the record (a
read-only folder) turns that input into a failure, reported in its place like any other, and is
remembered so that the run's exit code says so (``failed_labels``). A command plugs a sink in with
one line: ``renderer = RecordTee(renderer, [sink])``.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..engine.types import Event, Result
from ..errors import KvlError
from ..pages import Page
from .base import Renderer


class RecordSink(Protocol):
    """Keeps one input's finished result; raises ``KvlError`` (a ``DiskError``) when it cannot."""

    def write(self, label: str, result: Result, meta: dict[str, Any]) -> None: ...


class RecordTee(Renderer):
    """Delegates everything shown to ``inner``; each result goes to ``sinks`` before it is shown."""

    def __init__(self, inner: Renderer, sinks: list[RecordSink]) -> None:
        super().__init__(inner.opts, inner.env)  # every attribute a renderer has; nothing is drawn here
        self.inner = inner
        self.sinks = sinks
        self.out, self.err_stream, self.err = inner.out, inner.err_stream, inner.err
        self.failed_labels: dict[str, KvlError] = {}
        self._page: Page | None = None

    def status(self, label: str, detail: str = "") -> None:
        self.inner.status(label, detail)

    def stop_status(self) -> None:
        self.inner.stop_status()

    def warn(self, message: str) -> None:
        self.inner.warn(message)

    def error(self, label: str, error: KvlError, *, page: Page | None = None,
              meta: dict[str, Any] | None = None) -> None:
        self.inner.error(label, error, page=page, meta=meta)

    def begin(self, label: str, index: int, total: int, *, page: Page | None = None) -> None:
        self._page = page
        self.inner.begin(label, index, total, page=page)

    def event(self, ev: Event) -> None:
        self.inner.event(ev)

    def end(self, label: str, result: Result, meta: dict[str, Any]) -> None:
        try:
            for sink in self.sinks:
                sink.write(label, result, meta)
        except KvlError as exc:
            self.failed_labels[label] = exc
            if not self.opts.json:  # the answer streamed already: finish it, then say what failed
                self.inner.end(label, result, meta)
            self.inner.error(label, exc, page=self._page)  # --json: the input's one record is its error
            return
        self.inner.end(label, result, meta)

    def close(self) -> None:
        self.inner.close()
