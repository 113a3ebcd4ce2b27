"""The renderer every output mode shares: progress on stderr, one-line errors, stats."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import IO, Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from ..engine.types import Event, FinishReason, Phase, PhaseEvent, Result
from ..environment import Environment
from ..errors import KvlError
from ..pages import Page
from ..safetext import one_line

PHASE_LABELS = {Phase.LOAD: "loading model", Phase.ENCODE: "encoding image", Phase.PREFILL: "reading prompt",
                Phase.GENERATE: "thinking"}


def make_console(file: IO[str] | None = None, *, stderr: bool = False, force_terminal: bool | None = None,
                 no_color: bool | None = None, highlight: bool = False) -> Console:
    """A rich Console that honours NO_COLOR (https://no-color.org) fully: no colour and no attribute
    (bold, dim, italic) either; rich's own ``no_color`` drops colours only. ``no_color`` None: from
    the environment."""
    if no_color is None:
        no_color = bool(os.environ.get("NO_COLOR"))
    return Console(file=file, stderr=stderr, highlight=highlight, force_terminal=force_terminal,
                   color_system=None if no_color else "auto")


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


@dataclass
class OutputOptions:
    json: bool = False
    show_thinking: bool | None = None  # None: on a terminal yes, in a pipe no
    verbose: bool = False
    color: bool | None = None
    page_marks: bool = False  # a document's pages each after ``<!-- page N -->`` (ocr --format markdown)


@dataclass
class _Progress:
    """What the spinner says; its elapsed time is computed each time it is drawn."""

    label: str = ""
    started: float = field(default_factory=time.monotonic)
    detail: str = ""

    def set(self, label: str, detail: str = "") -> None:
        if label != self.label:
            self.started = time.monotonic()
        self.label, self.detail = label, detail

    def __rich__(self) -> RenderableType:
        detail = f" {self.detail}" if self.detail else ""
        text = f"{self.label}{detail} · {fmt_seconds(time.monotonic() - self.started)}"
        return Spinner("dots", Text(text, style="cyan"))


def phase_text(ev: PhaseEvent) -> tuple[str, str]:
    label = PHASE_LABELS.get(ev.phase, ev.phase)
    detail = f"{ev.index}/{ev.total}" if ev.phase is Phase.ENCODE and ev.total > 1 else ""
    return label, detail


class Renderer:
    """Base: progress on stderr (when it is a terminal) and one-line errors."""

    def __init__(self, opts: OutputOptions, env: Environment | None = None) -> None:
        self.opts = opts
        self.env = env or Environment()
        self.out = self.env.stdout
        self.err_stream = self.env.stderr
        self.err = make_console(self.err_stream, stderr=True, force_terminal=opts.color, no_color=self.env.no_color)
        self.progress = _Progress()
        self._status: Live | None = None
        self._said: tuple[str, set[str]] = ("", set())  # -v into a log: a label, the lines said since it came
        self.total = 1
        self.failed = 0

    # progress ---------------------------------------------------------------------------
    def status(self, label: str, detail: str = "") -> None:
        detail = one_line(detail)  # it may name an input
        self.progress.set(label, detail)
        if self.opts.verbose and not self.err.is_terminal:
            self._say(label, f"kvl: {label} {detail}".rstrip())
        if self.err.is_terminal and self._status is None:
            self._status = Live(self.progress, console=self.err, transient=True, refresh_per_second=8)
            self._status.start()

    def _say(self, label: str, line: str) -> None:
        """A status line in a log once, not once per progress event (a scene's frames, a prompt's chunks),
        also while several sequences take turns; said again once another label has come in between (the
        next video's "finding scenes" and its scenes)."""
        if label != self._said[0]:
            self._said = (label, set())
        if line not in self._said[1]:
            self._said[1].add(line)
            self.err.print(Text(line), soft_wrap=True)

    def stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def warn(self, message: str) -> None:
        self.stop_status()
        self.err.print(Text(f"kvl: warning: {one_line(message)}", style="yellow"), soft_wrap=True)

    def error(self, label: str, error: KvlError, *, page: Page | None = None,
              meta: dict[str, Any] | None = None) -> None:
        """One input failed (``page``: one page of a document did; the message names it). ``meta``: what
        a record of it says besides (a chat turn's ``turn``, ``question``)."""
        self.failed += 1
        self.stop_status()
        text = str(error)
        if page is not None and f"page {page.number}" not in text:
            text = f"{label} page {page.number}: {text}"
        self.err.print(Text(f"kvl: error: {one_line(text)}", style="bold red"), soft_wrap=True)

    # per input ----------------------------------------------------------------------------
    def begin(self, label: str, index: int, total: int, *, page: Page | None = None) -> None:
        """An input's answer begins: the ``index``-th of ``total`` inputs (a document's pages count as
        one input: ``page`` says which page of it this is)."""
        self.total = total

    def event(self, ev: Event) -> None:
        if isinstance(ev, PhaseEvent):
            self.status(*phase_text(ev))

    def end(self, label: str, result: Result, meta: dict[str, Any]) -> None:
        self.stop_status()
        if result.finish_reason is FinishReason.LENGTH and not result.answer:
            self.warn(f"{label}: the model was still thinking when it reached --max-tokens "
                      "(raise --max-tokens or set --think-budget)")
        if self.opts.verbose:
            self.err.print(Text(stats_line(result, meta), style="dim"))

    def close(self) -> None:
        self.stop_status()


def stats_line(result: Result, meta: dict[str, Any]) -> str:
    t, tm = result.tokens, result.timings
    gen_rate = t.generated / tm.generate_s if tm.generate_s else 0.0
    return (f"{t.image} image tokens ({', '.join(map(str, result.image_tokens)) or '-'}) · prompt {t.prompt} · "
            f"thinking {t.thinking} · answer {t.answer} · encode {tm.encode_s:.1f} s · "
            f"prefill {tm.prefill_s:.1f} s · generate {tm.generate_s:.1f} s ({gen_rate:.2f} tok/s) · "
            f"{result.finish_reason.value}{_cache_note(result)}")


def _cache_note(result: Result) -> str:
    c = result.cached
    parts = []
    if c.prefix_tokens:
        parts.append(f"{c.prefix_tokens} prompt tokens reused")
    if c.images:
        parts.append(f"{c.images} image{'s' if c.images > 1 else ''} from cache")
    return f" · cache: {', '.join(parts)}" if parts else ""
