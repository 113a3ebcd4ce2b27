"""Split the Thinking model's stream into thinking and answer while it streams.

The model writes ``◁think▷ … ◁/think▷`` and then the answer. The markers are plain text spread
over several tokens, so a marker can arrive split across pieces: text that could still be the
start of a marker is held back until the next piece settles it.
"""

from __future__ import annotations

import enum

THINK_OPEN = "◁think▷"
THINK_CLOSE = "◁/think▷"


class Section(str, enum.Enum):
    """Which part of the model's output a piece of text belongs to."""

    START = "start"  # nothing but whitespace seen yet
    THINKING = "thinking"
    ANSWER = "answer"


def _held_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplitter:
    """Feed text pieces; get ``(section, text)`` pairs back, section being THINKING or ANSWER."""

    def __init__(self, *, start_in_answer: bool = False) -> None:
        self.section = Section.ANSWER if start_in_answer else Section.START
        self._pending = ""
        self._section_started = False  # leading whitespace of a section is dropped
        self.thinking = ""
        self.answer = ""

    def feed(self, piece: str) -> list[tuple[Section, str]]:
        out: list[tuple[Section, str]] = []
        self._pending += piece
        while self._pending:
            if self.section is Section.START:
                stripped = self._pending.lstrip()
                if not stripped:
                    return out
                if stripped.startswith(THINK_OPEN):
                    self._pending = stripped[len(THINK_OPEN):]
                    self._enter(Section.THINKING)
                    continue
                if THINK_OPEN.startswith(stripped):
                    return out  # could still become the opening marker
                self._enter(Section.ANSWER)
                continue
            if self.section is Section.THINKING:
                idx = self._pending.find(THINK_CLOSE)
                if idx >= 0:
                    self._emit(out, Section.THINKING, self._pending[:idx])
                    self._pending = self._pending[idx + len(THINK_CLOSE):]
                    self._enter(Section.ANSWER)
                    continue
                hold = _held_suffix(self._pending, THINK_CLOSE)
                self._emit(out, Section.THINKING, self._pending[: len(self._pending) - hold])
                self._pending = self._pending[len(self._pending) - hold:]
                return out
            # ANSWER: everything is answer; a stray opening marker from a confused model is kept
            self._emit(out, Section.ANSWER, self._pending)
            self._pending = ""
        return out

    def would_start_answer(self, data: bytes) -> bool:
        """Whether ``data`` (bytes not yet decoded, a partial character included), fed now, would
        begin the answer without any thinking first."""
        if self.section is not Section.START:
            return False
        stripped = (self._pending.encode("utf-8") + data).lstrip()
        marker = THINK_OPEN.encode("utf-8")
        return bool(stripped) and not stripped.startswith(marker) and not marker.startswith(stripped)

    def close_thinking(self) -> list[tuple[Section, str]]:
        """The engine ended the thinking (budget spent): flush it and switch to the answer."""
        out: list[tuple[Section, str]] = []
        if self.section is Section.THINKING:
            self._emit(out, Section.THINKING, self._pending)
        self._pending = ""
        self._enter(Section.ANSWER)
        return out

    def flush(self) -> list[tuple[Section, str]]:
        """End of stream: whatever was held back belongs to the current section."""
        out: list[tuple[Section, str]] = []
        if self._pending:
            section = Section.ANSWER if self.section is Section.START else self.section
            self._emit(out, section, self._pending)
            self._pending = ""
        self.thinking = self.thinking.rstrip()
        self.answer = self.answer.rstrip()
        return out

    def _enter(self, section: Section) -> None:
        self.section = section
        self._section_started = False

    def _emit(self, out: list[tuple[Section, str]], section: Section, text: str) -> None:
        if not text:
            return
        if not self._section_started:
            text = text.lstrip()
            if not text:
                return
            self._section_started = True
        if section is Section.THINKING:
            self.thinking += text
        else:
            self.answer += text
        out.append((section, text))
