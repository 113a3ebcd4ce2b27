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

from ..environment import Environment
from .base import OutputOptions, Renderer, phase_text, stats_line
from .live import LiveRenderer
from .stream import JsonRenderer, PlainRenderer

__all__ = ["JsonRenderer", "LiveRenderer", "OutputOptions", "PlainRenderer", "Renderer", "make_renderer",
           "phase_text", "stats_line"]


def make_renderer(opts: OutputOptions, env: Environment | None = None) -> Renderer:
    """JSON Lines with ``--json``; else a live view when stdout is a terminal, plain text in a pipe."""
    env = env or Environment()
    if opts.json:
        return JsonRenderer(opts, env)
    is_tty = opts.color if opts.color is not None else env.stdout_isatty
    if is_tty:
        return LiveRenderer(opts, env)
    return PlainRenderer(opts, env)
