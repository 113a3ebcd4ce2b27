"""Text in scripts written without spaces (Chinese, Japanese, Korean, Thai) made searchable.

FTS5's ``unicode61`` tokenizer splits words at spaces and punctuation; a Chinese caption is one run
of letters to it, so "白板" inside "一个白板上的图表" is no word it can find. Each such character is
indexed as a word of its own instead: a zero-width space (a separator to ``unicode61``, invisible
when shown) goes on both sides of it, in the text indexed and in the query, where a run of them
becomes a phrase (the characters next to each other). The text is shown without the marks.
"""

from __future__ import annotations

import re

MARK = "\u200b"
# Han (with extensions and compatibility ideographs), kana, Hangul syllables and jamo, Thai
UNSPACED = re.compile("[\u1100-\u11ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
                      "\u0e00-\u0e7f\U00020000-\U0003134f]")


def segment(text: str) -> str:
    """``text`` with each character of an unspaced script set apart as a word of its own."""
    if text.isascii() or UNSPACED.search(text) is None:
        return text
    return UNSPACED.sub(lambda m: f"{MARK}{m.group()}{MARK}", text)


def unsegment(text: str) -> str:
    """``text`` as it was before ``segment``."""
    return text.replace(MARK, "") if MARK in text else text
