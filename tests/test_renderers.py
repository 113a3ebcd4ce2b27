"""The renderers (live, plain, JSON), fed an answer's events directly, on a fake terminal or a pipe;
the engine's own output is covered end to end elsewhere."""

from __future__ import annotations

import io
import json

from kvl_cli.engine.types import DoneEvent
from kvl_cli.environment import Environment
from kvl_cli.render import JsonRenderer, LiveRenderer, OutputOptions, PlainRenderer

from .terminal import EVENTS, RESULT, FakeTTY


def feed(renderer, label="a.jpg", total=1):
    renderer.begin(label, 1, total)
    for ev in EVENTS:
        renderer.event(ev)
    renderer.event(DoneEvent(RESULT))
    renderer.end(label, RESULT, {"task": "caption"})
    renderer.close()


def test_live_renderer_collapses_thinking_and_renders_markdown():
    out, err = FakeTTY(), io.StringIO()
    feed(LiveRenderer(OutputOptions(color=True), Environment(stdout=out, stderr=err)))
    screen = out.getvalue()
    assert "thought for" in screen and "3 tokens" in screen
    assert "It is" in screen and "**red**" not in screen  # Markdown rendered, not raw
    assert "\x1b[" in screen  # styled


def test_live_renderer_replayed_answer_says_how_long_the_model_thought():
    """A batch answer is replayed in one go when it finishes: the thinking time is the engine's."""
    from dataclasses import replace

    out = FakeTTY()
    r = LiveRenderer(OutputOptions(color=False), Environment(stdout=out, stderr=io.StringIO()))
    r.begin("a.jpg", 1, 2)
    for ev in EVENTS:
        r.event(ev)
    r.end("a.jpg", replace(RESULT, timings=replace(RESULT.timings, think_s=75.0)), {})
    r.close()
    assert "thought for 1 min 15 s · 3 tokens" in out.getvalue()


def test_live_renderer_respects_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out = FakeTTY()
    feed(LiveRenderer(OutputOptions(), Environment(stdout=out, stderr=io.StringIO())))
    assert "\x1b[3" not in out.getvalue()  # no colour codes (cursor movement is fine)


def test_plain_renderer_streams_answer_only():
    out, err = io.StringIO(), io.StringIO()
    feed(PlainRenderer(OutputOptions(), Environment(stdout=out, stderr=err)))
    assert out.getvalue() == "It is **red**.\n"
    assert "hmm" not in err.getvalue()


def test_json_renderer_one_object():
    out = io.StringIO()
    feed(JsonRenderer(OutputOptions(json=True), Environment(stdout=out, stderr=io.StringIO())))
    (line,) = out.getvalue().splitlines()
    rec = json.loads(line)
    assert rec["answer"] == "It is **red**." and rec["thinking"] == "hmm red" and rec["task"] == "caption"
