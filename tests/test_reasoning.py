"""The thinking/answer split must survive markers cut at any point between pieces."""

from __future__ import annotations

import pytest

from kvl_cli.engine.reasoning import ReasoningSplitter, Section

STREAM = "◁think▷\nLet me look. The sign says ◁ and ▷.\n◁/think▷\n\nIt says **STOP**."


def run(pieces: list[str], **kw) -> ReasoningSplitter:
    s = ReasoningSplitter(**kw)
    events = []
    for p in pieces:
        events += s.feed(p)
    events += s.flush()
    joined = {ph: "".join(t for p2, t in events if p2 is ph) for ph in (Section.THINKING, Section.ANSWER)}
    assert joined[Section.THINKING].rstrip() == s.thinking
    assert joined[Section.ANSWER].rstrip() == s.answer
    return s


def test_whole_stream():
    s = run([STREAM])
    assert s.thinking == "Let me look. The sign says ◁ and ▷."
    assert s.answer == "It says **STOP**."


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_every_two_piece_split(cut):
    s = run([STREAM[:cut], STREAM[cut:]])
    assert s.thinking == "Let me look. The sign says ◁ and ▷."
    assert s.answer == "It says **STOP**."


def test_one_character_at_a_time():
    s = run(list(STREAM))
    assert s.answer == "It says **STOP**."


def test_no_thinking_at_all():
    s = run(["The answer", " is 4."])
    assert s.thinking == "" and s.answer == "The answer is 4."


def test_prefix_of_the_marker_that_is_not_one():
    s = run(["◁thin", "g"])
    assert s.answer == "◁thing" and s.thinking == ""


def test_unfinished_thinking_stays_thinking():
    s = run(["◁think▷ still going ◁/thi"])
    assert s.thinking == "still going ◁/thi" and s.answer == ""


def test_close_thinking_forced_by_budget():
    s = ReasoningSplitter()
    s.feed("◁think▷ a b ◁/")
    s.close_thinking()
    s.feed("Answer.")
    s.flush()
    assert s.thinking == "a b ◁/" and s.answer == "Answer."


def test_start_in_answer():
    s = run(["◁think▷ odd"], start_in_answer=True)
    assert s.answer == "◁think▷ odd"
