"""Split the Thinking model's stream into thinking and answer while it streams.

The model writes ``◁think▷ … ◁/think▷`` and then the answer. The markers are plain text spread
over several tokens, so a marker can arrive split across pieces: text that could still be the
start of a marker is held back until the next piece settles it.
"""

from __future__ import annotations

import enum

THINK_OPEN = "◁think▷"
THINK_CLOSE = "◁/think▷"


class Phase(str, enum.Enum):
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
    """Feed text pieces; get ``(phase, text)`` pairs back, phase being THINKING or ANSWER."""

    def __init__(self, *, start_in_answer: bool = False) -> None:
        self.phase = Phase.ANSWER if start_in_answer else Phase.START
        self._pending = ""
        self._section_started = False  # leading whitespace of a section is dropped
        self.thinking = ""
        self.answer = ""

    def feed(self, piece: str) -> list[tuple[Phase, str]]:
        out: list[tuple[Phase, str]] = []
        self._pending += piece
        while self._pending:
            if self.phase is Phase.START:
                stripped = self._pending.lstrip()
                if not stripped:
                    return out
                if stripped.startswith(THINK_OPEN):
                    self._pending = stripped[len(THINK_OPEN):]
                    self._enter(Phase.THINKING)
                    continue
                if THINK_OPEN.startswith(stripped):
                    return out  # could still become the opening marker
                self._enter(Phase.ANSWER)
                continue
            if self.phase is Phase.THINKING:
                idx = self._pending.find(THINK_CLOSE)
                if idx >= 0:
                    self._emit(out, Phase.THINKING, self._pending[:idx])
                    self._pending = self._pending[idx + len(THINK_CLOSE):]
                    self._enter(Phase.ANSWER)
                    continue
                hold = _held_suffix(self._pending, THINK_CLOSE)
                self._emit(out, Phase.THINKING, self._pending[: len(self._pending) - hold])
                self._pending = self._pending[len(self._pending) - hold:]
                return out
            # ANSWER: everything is answer; a stray opening marker from a confused model is kept
            self._emit(out, Phase.ANSWER, self._pending)
            self._pending = ""
        return out

    def close_thinking(self) -> list[tuple[Phase, str]]:
        """The engine ended the thinking (budget spent): flush it and switch to the answer."""
        out: list[tuple[Phase, str]] = []
        if self.phase is Phase.THINKING:
            self._emit(out, Phase.THINKING, self._pending)
        self._pending = ""
        self._enter(Phase.ANSWER)
        return out

    def flush(self) -> list[tuple[Phase, str]]:
        """End of stream: whatever was held back belongs to the current phase."""
        out: list[tuple[Phase, str]] = []
        if self._pending:
            phase = Phase.ANSWER if self.phase is Phase.START else self.phase
            self._emit(out, phase, self._pending)
            self._pending = ""
        self.thinking = self.thinking.rstrip()
        self.answer = self.answer.rstrip()
        return out

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self._section_started = False

    def _emit(self, out: list[tuple[Phase, str]], phase: Phase, text: str) -> None:
        if not text:
            return
        if not self._section_started:
            text = text.lstrip()
            if not text:
                return
            self._section_started = True
        if phase is Phase.THINKING:
            self.thinking += text
        else:
            self.answer += text
        out.append((phase, text))
