"""One turn of a chat through the engine (this process's, or a running ``kvl serve`` of the same
pair): the request built from the conversation, its events streamed to the renderer, the answer
checked against a one-turn schema, the context made room in when it is full.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..engine.reasoning import Section
from ..engine.types import (
    Answerer,
    DoneEvent,
    FailedEvent,
    FinishReason,
    GenerationSettings,
    Request,
    Result,
    TextEvent,
    Timings,
    Tokens,
)
from ..errors import ContextError, KvlError
from ..render import Renderer
from ..schema import AnswerGate, AnswerSchema
from .conversation import Conversation

Factory = Callable[[Request | None], Answerer]  # (the first request, encoded during the load) -> the engine


@dataclass
class TurnOutcome:
    result: Result | None = None
    error: KvlError | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # record fields (``data`` for a schema)
    dropped: int = 0  # oldest turns dropped to make room


class TurnRunner:
    """Runs turns on one engine, loaded on the first turn that needs it."""

    def __init__(self, factory: Factory, settings: GenerationSettings, say: Callable[[str], None]) -> None:
        self.factory = factory
        self.settings = settings
        self.say = say  # a line for the person (stderr)
        self.engine: Answerer | None = None
        self.load_seconds = 0.0

    def settings_for(self, conv: Conversation, answer: AnswerSchema | None) -> GenerationSettings:
        s = self.settings if conv.think_budget is None else replace(self.settings, think_budget=conv.think_budget)
        if conv.think_budget == -1:  # "/think on": no budget at all
            s = replace(s, think_budget=None)
        return replace(s, constraint=answer.constraint() if answer is not None else None)

    def run(self, conv: Conversation, question: str, renderer: Renderer, answer: AnswerSchema | None) -> TurnOutcome:
        """The next turn. When the prompt does not fit, the older half of the turns is dropped (their
        media kept: a question may be about them) and the turn tried again, until it fits or no turn is
        left; half at once, so that the turns after it find their start in the cells again."""
        dropped = 0
        while True:
            outcome = self._once(conv, question, renderer, answer)
            outcome.dropped = dropped
            if not isinstance(outcome.error, ContextError) or not conv.turns:
                return outcome
            n = max(1, len(conv.turns) // 2)
            for _ in range(n):
                conv.drop_oldest()
            dropped += n
            self.say(f"the context is full: dropped the {n} oldest turn{'s' if n > 1 else ''} (their media kept); "
                     "/clear starts over")

    def _once(self, conv: Conversation, question: str, renderer: Renderer, answer: AnswerSchema | None) -> TurnOutcome:
        settings = self.settings_for(conv, answer)
        if self.engine is None:
            first = conv.request(question, _default_marker(), settings)
            self.engine = self.factory(first if first.images else None)
            self.load_seconds = self.engine.load_seconds
        request = conv.request(question, self.engine.marker, settings)
        gate = AnswerGate(answer)
        stream = _Partial()
        result: Result | None = None
        try:
            for _, ev in self.engine.generate_many([request], 1):
                if isinstance(ev, FailedEvent):
                    return TurnOutcome(error=ev.error)
                stream.see(ev)
                if gate.passes(ev):
                    renderer.event(ev)
                if isinstance(ev, DoneEvent):
                    result = ev.result
        except KeyboardInterrupt:
            result = stream.interrupted()  # Ctrl-C outside the engine's own loop: what was said stays
        if result is None:
            return TurnOutcome(error=KvlError("the engine ended the turn without an answer", hint="report it"))
        try:
            result, extra = gate.release(result, renderer.event)
        except KvlError as exc:
            return TurnOutcome(result=result, error=exc)
        return TurnOutcome(result=result, extra=extra)


def _default_marker() -> str:
    from ..engine.mtmd_handles import default_marker

    return default_marker()


class _Partial:
    """The text streamed so far, for a turn stopped before the engine's own result came."""

    def __init__(self) -> None:
        self.thinking = ""
        self.answer = ""
        self.t0 = time.perf_counter()

    def see(self, ev: object) -> None:
        if isinstance(ev, TextEvent):
            if ev.section is Section.THINKING:
                self.thinking += ev.text
            else:
                self.answer += ev.text

    def interrupted(self) -> Result:
        return Result(answer=self.answer, thinking=self.thinking, finish_reason=FinishReason.INTERRUPTED,
                      tokens=Tokens(), timings=Timings(generate_s=time.perf_counter() - self.t0), image_tokens=[])
