"""Output for a person at a terminal: one rich live view with the thinking and the answer.

The model's text is untrusted: its control characters are shown escaped (``safetext``)."""

from __future__ import annotations

import re
import time
from typing import Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.text import Text

from ..engine.reasoning import Section
from ..engine.types import DoneEvent, Event, Phase, PhaseEvent, Result, TextEvent
from ..environment import Environment
from ..errors import KvlError
from ..pages import Page
from ..safetext import escape_controls, one_line
from .base import OutputOptions, Renderer, fmt_seconds, make_console, phase_text

THINKING_PANEL_LINES = 8


class LiveRenderer(Renderer):
    """Terminal: thinking panel, then the answer as Markdown, in one live view on stdout."""

    def __init__(self, opts: OutputOptions, env: Environment | None = None) -> None:
        super().__init__(opts, env)
        self.console = make_console(self.out, force_terminal=opts.color, no_color=self.env.no_color)
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

    def error(self, label: str, error: KvlError, *, page: Page | None = None,
              meta: dict[str, Any] | None = None) -> None:
        self._stop_live()
        super().error(label, error, page=page, meta=meta)

    def begin(self, label: str, index: int, total: int, *, page: Page | None = None) -> None:
        super().begin(label, index, total, page=page)
        if page is not None:  # each page its own header: "doc.pdf · page 3/12", a blank line between pages
            label, self.total = f"{label} · page {page.number}/{page.count}", max(total, 2)
            index = index if page.first else max(index, 2)
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
            return Text(f"▸ thought for {fmt_seconds(secs)} · {self.think_tokens} tokens", style="dim")
        if not self.generating:
            return self.progress
        if not self.thinking:
            return self.progress if not self.answer else None
        elapsed = time.monotonic() - (self.think_started or time.monotonic())
        title = f"thinking · {fmt_seconds(elapsed)} · {self.think_tokens} tokens"
        if not show:
            self.progress.set("thinking", f"({self.think_tokens} tokens)")
            return self.progress
        width = max(20, self.console.width - 4)
        lines: list[str] = []
        for para in escape_controls(self.thinking).splitlines() or [""]:
            lines += [para[i:i + width] for i in range(0, max(len(para), 1), width)]
        tail = "\n".join(lines[-THINKING_PANEL_LINES:])
        return Panel(Text(tail, style="dim italic"), title=title, title_align="left", border_style="dim",
                     height=min(THINKING_PANEL_LINES, len(lines)) + 2)

    def __rich__(self) -> RenderableType:
        parts: list[RenderableType] = []
        if self.total > 1 and self.label:
            parts.append(Text(("\n" if self.index > 1 else "") + f"==> {one_line(self.label)} <==", style="bold"))
        thinking = self._thinking_renderable()
        if thinking is not None:
            parts.append(thinking)
        if self.answer:
            parts.append(Markdown(shown_markdown(escape_controls(self.answer))))  # never raw to a terminal
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


_CODE = re.compile(r"(```.*?(?:```|$)|~~~.*?(?:~~~|$)|`[^`\n]*`)", re.S)
_HTML = re.compile(r"<(?=[!/?A-Za-z])")


def shown_markdown(text: str) -> str:
    """The answer's Markdown with every HTML-looking ``<`` escaped outside code: rich's Markdown
    drops HTML (a literal ``<!-- page 9 -->`` or ``<div>`` in a page's text would vanish from the
    screen), and the answer's text is shown whole."""
    return "".join(part if i % 2 else _HTML.sub(r"\\<", part) for i, part in enumerate(_CODE.split(text)))
