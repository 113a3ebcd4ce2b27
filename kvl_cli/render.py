"""Turn engine events into what a person (or a script) reads.

* ``LiveRenderer`` (stdout is a terminal): one rich live view: a spinner with elapsed time while
  the model loads, encodes and reads; the thinking in a dim bounded panel that collapses to one
  line ("thought for 14 s · 212 tokens") when the answer starts; the answer as Markdown.
* ``PlainRenderer`` (stdout is a pipe or file): the answer alone on stdout, streamed as produced.
  Progress goes to stderr only when stderr is a terminal; thinking only with ``--show-thinking``.
* ``JsonRenderer`` (``--json``): one JSON object per input on stdout (JSON Lines).

With several inputs, plain and live output put a ``==> name <==`` line before each answer, the
way ``head`` does. Errors are one line each on stderr: ``kvl: error: <what> (<what to do>)``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.spinner import Spinner
from rich.text import Text

from .engine.reasoning import Section
from .engine.types import DoneEvent, Event, FinishReason, Phase, PhaseEvent, Result, TextEvent
from .environment import Environment
from .errors import KvlError

PHASE_LABELS = {Phase.LOAD: "loading model", Phase.ENCODE: "encoding image", Phase.PREFILL: "reading prompt",
                Phase.GENERATE: "thinking"}
THINKING_PANEL_LINES = 8


def _fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60):02d} s"


@dataclass
class OutputOptions:
    json: bool = False
    show_thinking: bool | None = None  # None: on a terminal yes, in a pipe no
    verbose: bool = False
    color: bool | None = None


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
        text = f"{self.label}{detail} · {_fmt_seconds(time.monotonic() - self.started)}"
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
        self.err = Console(file=self.err_stream, stderr=True, highlight=False, force_terminal=opts.color)
        self.progress = _Progress()
        self._status: Live | None = None
        self.total = 1
        self.failed = 0

    # progress ---------------------------------------------------------------------------
    def status(self, label: str, detail: str = "") -> None:
        self.progress.set(label, detail)
        if self.opts.verbose and not self.err.is_terminal:
            self.err.print(f"kvl: {label} {detail}".rstrip())
        if self.err.is_terminal and self._status is None:
            self._status = Live(self.progress, console=self.err, transient=True, refresh_per_second=8)
            self._status.start()

    def stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def warn(self, message: str) -> None:
        self.stop_status()
        self.err.print(Text(f"kvl: warning: {message}", style="yellow"))

    def error(self, label: str, error: KvlError) -> None:
        self.failed += 1
        self.stop_status()
        self.err.print(Text(f"kvl: error: {error}", style="bold red"), soft_wrap=True)

    # per input ----------------------------------------------------------------------------
    def begin(self, label: str, index: int, total: int) -> None:
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


class PlainRenderer(Renderer):
    """Pipe or file: the answer alone on stdout, streamed."""

    def __init__(self, opts: OutputOptions, env: Environment | None = None) -> None:
        super().__init__(opts, env)
        self._thinking_open = False
        self._wrote_answer = False

    def begin(self, label: str, index: int, total: int) -> None:
        super().begin(label, index, total)
        self._wrote_answer = False
        if total > 1:
            self.out.write(("\n" if index > 1 else "") + f"==> {label} <==\n")
            self.out.flush()

    def event(self, ev: Event) -> None:
        if isinstance(ev, TextEvent):
            if ev.section is Section.THINKING:
                if self.opts.show_thinking:
                    self.stop_status()
                    if not self._thinking_open:
                        self.err.print(Text("thinking:", style="dim italic"))
                        self._thinking_open = True
                    self.err_stream.write(ev.text)
                    self.err_stream.flush()
                return
            self.stop_status()
            if self._thinking_open:
                self.err_stream.write("\n")
                self._thinking_open = False
            self.out.write(ev.text)
            self.out.flush()
            self._wrote_answer = True
            return
        super().event(ev)

    def end(self, label: str, result: Result, meta: dict[str, Any]) -> None:
        if self._thinking_open:
            self.err_stream.write("\n")
            self._thinking_open = False
        if self._wrote_answer:
            self.out.write("\n")
            self.out.flush()
        super().end(label, result, meta)


class JsonRenderer(Renderer):
    """``--json``: one object per input, written when that input finishes."""

    def event(self, ev: Event) -> None:
        if not isinstance(ev, TextEvent):
            super().event(ev)

    def end(self, label: str, result: Result, meta: dict[str, Any]) -> None:
        super().end(label, result, meta)
        record = {
            "input": label, **{k: v for k, v in meta.items() if not k.startswith("_")},
            "answer": result.answer, "thinking": result.thinking,
            "finish_reason": result.finish_reason.value, "tokens": result.tokens.to_dict(),
            "image_tokens": result.image_tokens, "timings": result.timings.to_dict(),
            "think_budget_hit": result.think_budget_hit, "cached": result.cached.to_dict(), "error": None,
        }
        self.write(record)

    def error(self, label: str, error: KvlError) -> None:
        super().error(label, error)
        self.write({"input": label, "error": str(error), "exit_code": int(error.exit_code)})

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.out.flush()


class LiveRenderer(Renderer):
    """Terminal: thinking panel, then the answer as Markdown, in one live view on stdout."""

    def __init__(self, opts: OutputOptions, env: Environment | None = None) -> None:
        super().__init__(opts, env)
        self.console = Console(file=self.out, highlight=False, force_terminal=opts.color)
        self._live: Live | None = None
        self._reset("", 1, 1)

    def _reset(self, label: str, index: int, total: int) -> None:
        self.label, self.index = label, index
        self.thinking = ""
        self.answer = ""
        self.think_tokens = 0
        self.think_started: float | None = None
        self.think_seconds: float | None = None
        self.generating = False

    def status(self, label: str, detail: str = "") -> None:
        self.progress.set(label, detail)
        self._ensure_live()

    def stop_status(self) -> None:  # the spinner is part of the live view
        pass

    def _ensure_live(self) -> None:
        if self._live is None:
            self._live = Live(self, console=self.console, refresh_per_second=8, vertical_overflow="visible")
            self._live.start()

    def _stop_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def warn(self, message: str) -> None:
        self._stop_live()
        super().warn(message)

    def error(self, label: str, error: KvlError) -> None:
        self._stop_live()
        super().error(label, error)

    def begin(self, label: str, index: int, total: int) -> None:
        super().begin(label, index, total)
        self._reset(label, index, total)

    def event(self, ev: Event) -> None:
        if isinstance(ev, TextEvent):
            if ev.section is Section.THINKING:
                if self.think_started is None:
                    self.think_started = time.monotonic()
                self.thinking += ev.text
                self.think_tokens += 1
            else:
                if self.think_started is not None and self.think_seconds is None:
                    self.think_seconds = time.monotonic() - self.think_started
                self.answer += ev.text
            self._ensure_live()
            return
        if isinstance(ev, PhaseEvent):
            if ev.phase is Phase.GENERATE:
                self.generating = True
                self.think_started = None
            self.status(*phase_text(ev))
        elif isinstance(ev, DoneEvent):
            pass

    def _thinking_renderable(self) -> RenderableType | None:
        show = self.opts.show_thinking is not False
        if self.think_seconds is not None or (self.answer and self.thinking):
            secs = self.think_seconds or 0.0
            return Text(f"▸ thought for {_fmt_seconds(secs)} · {self.think_tokens} tokens", style="dim")
        if not self.generating:
            return self.progress
        if not self.thinking:
            return self.progress if not self.answer else None
        elapsed = time.monotonic() - (self.think_started or time.monotonic())
        title = f"thinking · {_fmt_seconds(elapsed)} · {self.think_tokens} tokens"
        if not show:
            self.progress.set("thinking", f"({self.think_tokens} tokens)")
            return self.progress
        width = max(20, self.console.width - 4)
        lines: list[str] = []
        for para in self.thinking.splitlines() or [""]:
            lines += [para[i:i + width] for i in range(0, max(len(para), 1), width)]
        tail = "\n".join(lines[-THINKING_PANEL_LINES:])
        return Panel(Text(tail, style="dim italic"), title=title, title_align="left", border_style="dim",
                     height=min(THINKING_PANEL_LINES, len(lines)) + 2)

    def __rich__(self) -> RenderableType:
        parts: list[RenderableType] = []
        if self.total > 1 and self.label:
            parts.append(Text(("\n" if self.index > 1 else "") + f"==> {self.label} <==", style="bold"))
        thinking = self._thinking_renderable()
        if thinking is not None:
            parts.append(thinking)
        if self.answer:
            parts.append(Markdown(self.answer))
        return Group(*parts)

    def end(self, label: str, result: Result, meta: dict[str, Any]) -> None:
        if result.timings.think_s is not None and (self.think_seconds is None or self.think_seconds < 0.05):
            self.think_seconds = result.timings.think_s  # the engine's clock: right for a replayed answer
        elif result.thinking and self.think_seconds is None and self.think_started is not None:
            self.think_seconds = time.monotonic() - self.think_started
        self.think_tokens = result.tokens.thinking
        self.answer = result.answer
        self.generating = True
        self._ensure_live()
        self._stop_live()
        super().end(label, result, meta)

    def close(self) -> None:
        self._stop_live()


def make_renderer(opts: OutputOptions, env: Environment | None = None) -> Renderer:
    """JSON Lines with ``--json``; else a live view when stdout is a terminal, plain text in a pipe."""
    env = env or Environment()
    if opts.json:
        return JsonRenderer(opts, env)
    is_tty = opts.color if opts.color is not None else env.stdout_isatty
    if is_tty:
        return LiveRenderer(opts, env)
    return PlainRenderer(opts, env)
