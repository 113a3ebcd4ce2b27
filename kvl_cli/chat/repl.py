"""The chat loop: read a line, run it as a slash command or as a turn, write the answer; again.

1) the media given on the command line (and a ``--resume``d conversation) are loaded, the pair
found, before anything else; 2) each line read is a command (its line on stderr) or a question
(its answer through the renderer: live on a terminal, plain in a pipe, a JSON record with
``--json``); 3) the end of input (Ctrl-D, ``/exit``) ends with 0, or with the failed turns' code.

Lines come from a terminal prompt (``terminal.TerminalPrompt``: line editing, history, a paste of
several lines as one turn) or, when stdin is not a terminal, one turn per line (``LinePrompt``).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol

from rich.text import Text

from ..engine import stop
from ..engine.types import FinishReason, GenerationSettings, Result
from ..environment import Environment
from ..errors import ExitCode, InputError, KvlError, Terminated, batch_exit_code
from ..render import Renderer
from ..safetext import one_line
from ..schema import AnswerSchema
from .commands import Action, ChatState, is_command, question_text, run_command
from .conversation import Conversation
from .media import Budget
from .turns import Factory, TurnOutcome, TurnRunner

MAX_LINE_BYTES = 1000**2  # a piped line (a question) at most


class Prompt(Protocol):
    interactive: bool  # a person at a terminal: Ctrl-C stops an answer or clears a line, not the chat

    def read(self) -> str | None:
        """The next line (a turn or a command); None at the end of input. Ctrl-C: KeyboardInterrupt."""


class LinePrompt:
    """stdin not a terminal: each line is a turn. A line over ``MAX_LINE_BYTES`` is left out (an error
    line, the chat goes on) without holding more than that in memory (``kvl chat < /dev/zero``)."""

    interactive = False

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.number = 0

    def read(self) -> str | None:
        while True:
            raw = self._line()
            if raw is None:
                return None
            line = raw.decode("utf-8", errors="replace").strip()
            if line:
                return line

    def _line(self) -> bytes | None:
        raw = self.stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return None
        self.number += 1
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            return raw
        while raw and not raw.endswith(b"\n"):  # the rest of that line, a chunk at a time
            raw = self.stream.readline(MAX_LINE_BYTES)
        raise InputError(f"line {self.number}: longer than {MAX_LINE_BYTES // 1000**2} MB: left out",
                         hint="a question is one line of text")


@dataclass
class TurnRecord:
    """What a client of ``Chat.ask`` gets back for one turn."""

    question: str
    result: Result | None
    error: KvlError | None
    extra: dict[str, Any]


class Chat:
    """One conversation on one engine, with its renderer: commands and turns."""

    def __init__(self, state: ChatState, runner: TurnRunner, renderer: Renderer, meta: dict[str, Any],
                 say: Callable[[str], None], fail: Callable[[KvlError], None]) -> None:
        self.state = state
        self.runner = runner
        self.renderer = renderer
        self.meta = meta  # the record fields every turn shares (task, model, server)
        self.say = say
        self.fail = fail
        self.failures: list[int] = []
        self.answered = 0
        self.turn_no = len(state.conv.turns)
        self.interactive = True  # Ctrl-C stops an answer, not the chat (``loop`` sets it from its prompt)

    @property
    def conv(self) -> Conversation:
        return self.state.conv

    def handle(self, line: str) -> Action:
        """A line typed or piped: a command, else a question."""
        if is_command(line):
            try:
                action, said = run_command(self.state, line)
            except KvlError as exc:
                self.fail(exc)
                return Action.CONTINUE
            except KeyboardInterrupt as exc:  # a slow /add (a URL, a video, a FIFO nobody writes)
                if isinstance(exc, Terminated) or not self.interactive:
                    raise
                self.say(f"stopped: {one_line(line)}")
                return Action.CONTINUE
            if said:
                self.say(said)
            return action
        self.ask(question_text(line))
        return Action.CONTINUE

    def ask(self, question: str) -> TurnRecord:
        """One turn: the answer streamed through the renderer, the turn kept in the conversation."""
        self.turn_no += 1
        media = [m.label for m in self.conv.pending]
        label = f"turn {self.turn_no}"
        self.renderer.begin(label, self.turn_no, 1)
        answer = self.state.answer or self.state.default_answer
        self.state.answer = None  # /schema and /choices: this answer only
        outcome = self.runner.run(self.conv, question, self.renderer, answer)
        if outcome.result is None or outcome.error is not None:
            return self._failed(question, outcome, label, {"turn": self.turn_no, "question": question, "media": media})
        result = outcome.result
        self.conv.record(question, result.answer, result.thinking, result.finish_reason.value)
        meta = {**self.meta, "turn": self.turn_no, "question": question, "media": media,
                "load_s": round(self.runner.load_seconds, 3), **outcome.extra}
        self.renderer.end(label, result, meta)
        self.answered += 1
        if result.finish_reason is FinishReason.CONTEXT:
            self.say("the context is full: the answer was cut short; the next turn drops the oldest turns, "
                     "or /clear starts over")
        elif result.interrupted:
            _end_if_stopped(self.interactive)
            self.say("stopped; what was said is kept")
        return TurnRecord(question, result, None, outcome.extra)

    def _failed(self, question: str, outcome: TurnOutcome, label: str, meta: dict[str, Any]) -> TurnRecord:
        error = outcome.error or KvlError("no answer")
        self.failures.append(int(error.exit_code))
        self.renderer.error(label, error, meta=meta)
        return TurnRecord(question, outcome.result, error, outcome.extra)

    def loop(self, prompt: Prompt) -> int:
        """Until the end of input or /exit. At a terminal Ctrl-C clears the line, or stops the answer
        and the chat goes on; in a pipe it ends the chat (130), as SIGTERM does everywhere (143)."""
        self.interactive = prompt.interactive
        try:
            while True:
                try:
                    line = prompt.read()
                except KvlError as exc:  # a line that cannot be a question
                    self.fail(exc)
                    continue
                except Terminated:
                    raise
                except KeyboardInterrupt:
                    if not prompt.interactive:
                        raise
                    continue
                if line is None:
                    break
                if self.handle(line) is Action.EXIT:
                    break
                _end_if_stopped(self.interactive)
        finally:
            self.renderer.close()
        return batch_exit_code(self.failures, self.answered) if self.failures else int(ExitCode.OK)


def _end_if_stopped(interactive: bool) -> None:
    """After a line: a SIGTERM that stopped it ends the chat, and so does a Ctrl-C in a pipe; a Ctrl-C
    at a terminal stopped that answer only (what was said is kept), and the next line starts afresh."""
    reason = stop.reason()
    if reason == signal.SIGTERM:
        raise Terminated()
    if reason == signal.SIGINT:
        if not interactive:
            raise KeyboardInterrupt()
        stop.reset()


def stderr_voice(renderer: Renderer) -> tuple[Callable[[str], None], Callable[[KvlError], None]]:
    """(say, fail): a note and an error line on stderr (never stdout: it carries the answers)."""
    def say(text: str) -> None:
        renderer.stop_status()
        for line in text.splitlines():
            renderer.err.print(Text(line, style="dim"), soft_wrap=True)

    def fail(error: KvlError) -> None:
        renderer.stop_status()
        renderer.err.print(Text(f"kvl: error: {one_line(str(error))}", style="bold red"), soft_wrap=True)

    return say, fail


def make_chat(conv: Conversation, factory: Factory, settings: GenerationSettings, budget: Budget,
              renderer: Renderer, meta: dict[str, Any], answer: AnswerSchema | None = None) -> Chat:
    """``answer``: the shape of every answer (``--schema``, ``--choices``)."""
    say, fail = stderr_voice(renderer)
    state = ChatState(conv, budget, default_answer=answer)
    return Chat(state, TurnRunner(factory, settings, say), renderer, meta, say, fail)


def choose_prompt(env: Environment, history: Any = None) -> Prompt:
    """A terminal prompt when stdin and stdout are terminals, else one turn per line of stdin."""
    if env.stdin_isatty and env.stdout_isatty:
        from .terminal import TerminalPrompt

        return TerminalPrompt(history)
    return LinePrompt(env.stdin)
