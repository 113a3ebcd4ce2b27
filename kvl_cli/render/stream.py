"""Output for scripts: the answer alone, streamed (a pipe or file), or one JSON object per input.

In a pipe the answer is written byte-exact; on a terminal (``--no-color`` on one) its control
characters are shown escaped, as is thinking on a terminal's stderr (``safetext``). Input names in
``==> name <==`` lines are always escaped to one line. Each JSON record is one write of a whole
line, then a flush, so a failure (a full disk) never leaves an earlier record cut."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text

from ..engine.reasoning import Section
from ..engine.types import Event, Result, TextEvent
from ..environment import Environment
from ..errors import KvlError
from ..pages import Page
from ..safetext import escape_controls, json_safe, one_line
from .base import OutputOptions, Renderer


class PlainRenderer(Renderer):
    """Pipe or file: the answer alone on stdout, streamed."""

    def __init__(self, opts: OutputOptions, env: Environment | None = None) -> None:
        super().__init__(opts, env)
        self._thinking_open = False
        self._wrote_answer = False
        self._document: str | None = None  # the document whose pages are being written
        self._answer_text = escape_controls if self.env.stdout_isatty else str
        self._thinking_text = escape_controls if self.env.stderr_isatty else str

    def begin(self, label: str, index: int, total: int, *, page: Page | None = None) -> None:
        super().begin(label, index, total, page=page)
        self._wrote_answer = False
        if page is not None and not page.first and self._document == label:  # its next page: a page break,
            self.out.write("\n" if self.opts.page_marks else "\f")  # as pdftotext writes them
        elif total > 1:
            self.out.write(("\n" if index > 1 else "") + f"==> {one_line(label)} <==\n")
        if page is not None and self.opts.page_marks:
            self.out.write(f"<!-- page {page.number} -->\n\n")
        self._document = label if page is not None else None  # (its first page may have failed: no break)
        self.out.flush()

    def event(self, ev: Event) -> None:
        if isinstance(ev, TextEvent):
            if ev.section is Section.THINKING:
                if self.opts.show_thinking:
                    self.stop_status()
                    if not self._thinking_open:
                        self.err.print(Text("thinking:", style="dim italic"))
                        self._thinking_open = True
                    self.err_stream.write(self._thinking_text(ev.text))
                    self.err_stream.flush()
                return
            self.stop_status()
            if self._thinking_open:
                self.err_stream.write("\n")
                self._thinking_open = False
            text = ev.text if self._document is None else ev.text.replace("\f", "\n")  # \f: between pages only
            self.out.write(self._answer_text(text))
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


def result_record(label: str, result: Result, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` record of one input's result (its ``meta``: the run's fields, task and model)."""
    page: dict[str, Any] = {k: meta[k] for k in ("page", "pages") if k in meta}  # a page: right after its name
    return {
        "input": label, **page, **{k: v for k, v in meta.items() if not k.startswith("_")},
        "answer": result.answer, "thinking": result.thinking,
        "finish_reason": result.finish_reason.value, "tokens": result.tokens.to_dict(),
        "image_tokens": result.image_tokens, "timings": result.timings.to_dict(),
        "think_budget_hit": result.think_budget_hit, "cached": result.cached.to_dict(), "error": None,
    }


class JsonRenderer(Renderer):
    """``--json``: one object per input, written when that input finishes."""

    def event(self, ev: Event) -> None:
        if not isinstance(ev, TextEvent):
            super().event(ev)

    def end(self, label: str, result: Result, meta: dict[str, Any]) -> None:
        super().end(label, result, meta)
        self.write(result_record(label, result, meta))

    def error(self, label: str, error: KvlError, *, page: Page | None = None,
              meta: dict[str, Any] | None = None) -> None:
        super().error(label, error, page=page)
        where = {"page": page.number, "pages": page.count} if page is not None else {}
        self.write({"input": label, **where, **(meta or {}), "error": str(error), "exit_code": int(error.exit_code)})

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(json_safe(json.dumps(record, ensure_ascii=False)) + "\n")
        self.out.flush()
