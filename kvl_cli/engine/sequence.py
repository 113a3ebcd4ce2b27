"""One answer being generated: its sampler, thinking budget, streamed text and result."""

from __future__ import annotations

import codecs
import enum
import time
from collections.abc import Iterator

from .constraint import ConstrainedSampler
from .llama_handles import Context, Model, Sampler
from .prompt import PreparedPrompt
from .reasoning import THINK_CLOSE, THINK_OPEN, ReasoningSplitter, Section
from .types import CacheStats, Event, FinishReason, Result, TextEvent, Timings, Tokens


class SeqState(enum.Enum):
    PREFILLING = "prefilling"  # the prompt is being evaluated
    GENERATING = "generating"  # sampling; ``feed`` holds what the next decode evaluates
    FINISHED = "finished"  # ``finish`` says why; the result is ready


class Sequence:
    """A request in one KV sequence of a context, from prefill to result."""

    def __init__(self, index: int, seq_id: int, prep: PreparedPrompt, model: Model, im_end: int | None) -> None:
        self.index = index  # the request's place in the batch
        self.seq_id = seq_id
        self.prep = prep
        self.settings = prep.request.settings
        self.model = model
        self.im_end = im_end
        self.state = SeqState.PREFILLING
        self.finish: FinishReason | None = None
        self.sampler: Sampler | ConstrainedSampler | None = None
        self.splitter = ReasoningSplitter(start_in_answer=prep.no_think)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.tokens = Tokens(prompt=prep.n_prompt, image=sum(prep.image_tokens))
        self.timings = Timings()
        self.cached = CacheStats()
        self.thought = 0  # what the budget counts: tokens after the opening marker
        self.budget_hit = False
        self.feed: list[int] = []
        self.out: list[int] = []  # every token fed after the prompt, in order (what its cells hold)
        self.answer_at: int | None = None  # where the answer starts in ``out`` (None: no thinking closed)
        self.n_past = 0
        self.t_gen = 0.0

    def start(self, n_past: int) -> None:
        """The prompt is in: generation starts from its last logits."""
        self.n_past = n_past
        self.tokens.prompt = self.prep.n_prompt  # a kept answer's own spelling may have changed it
        self.sampler = Sampler(self.settings)
        if self.splitter.section is Section.ANSWER:
            self._constrain()  # no thinking: the answer starts at once
        self.state = SeqState.GENERATING
        self.t_gen = time.perf_counter()

    def end(self, reason: FinishReason) -> None:
        self.finish = reason
        self.state = SeqState.FINISHED

    def step(self, ctx: Context, logits_index: int) -> Iterator[Event]:
        """Sample one token from the logits at ``logits_index``; stream it; set what to feed next."""
        if self._at_limit(ctx):
            return
        token = self._sample(ctx, logits_index)
        if self.model.is_eog(token) or token == self.im_end:
            if self._answer_owed():  # the model ended while thinking: the constrained answer still comes
                self.feed = []
                yield from self._close_thinking(ctx, budget=False)
            else:
                self.end(FinishReason.STOP)
            return
        self.tokens.generated += 1
        before = self.splitter.section
        for section, delta in self.splitter.feed(self.decoder.decode(self.model.piece(token))):
            yield TextEvent(section, delta)
        self._count(before)
        self.feed = [token]
        self.out.append(token)
        if before is not Section.ANSWER and self.splitter.section is Section.ANSWER:
            self._constrain()  # the thinking closed: the answer follows the constraint from the next token
            if before is Section.THINKING:
                self.answer_at = len(self.out)
        if self.tokens.generated >= self.settings.max_tokens:
            self.end(FinishReason.LENGTH)  # no need to evaluate a token nothing will follow
            return
        budget = self.settings.think_budget
        if budget is not None and self.splitter.section is Section.THINKING and self.thought >= budget:
            yield from self._close_thinking(ctx, budget=True)

    def _sample(self, ctx: Context, logits_index: int) -> int:
        assert self.sampler is not None
        token = self._draw(ctx, logits_index)
        if not self._answer_owed() or self.splitter.section is Section.THINKING:
            return token
        held = self.decoder.getstate()[0]  # bytes of a character not complete yet
        ends = self.model.is_eog(token) or token == self.im_end
        if ends or self.splitter.would_start_answer(held + self.model.piece(token)):
            self._constrain()  # the model answers (or ends) without thinking: that answer is constrained too
            token = self._draw(ctx, logits_index)
        return token

    def _draw(self, ctx: Context, logits_index: int) -> int:
        assert self.sampler is not None
        if isinstance(self.sampler, ConstrainedSampler):  # it steers to finish near --max-tokens
            self.sampler.left = self.settings.max_tokens - self.tokens.generated
        return self.sampler.sample(ctx, logits_index)

    def _answer_owed(self) -> bool:
        """The request constrains its answer and that answer has not started yet."""
        return self.settings.constraint is not None and not isinstance(self.sampler, ConstrainedSampler)

    def _constrain(self) -> None:
        """From now on the answer is sampled under the request's constraint (if it has one)."""
        if self._answer_owed():
            assert self.settings.constraint is not None
            if self.sampler is not None:
                self.sampler.close()
            self.sampler = None
            end = self.im_end if self.im_end is not None else self.model.eos
            self.sampler = ConstrainedSampler(self.settings, self.model, self.settings.constraint, end)

    def _at_limit(self, ctx: Context) -> bool:
        if self.tokens.generated >= self.settings.max_tokens:
            self.end(FinishReason.LENGTH)
        elif self.n_past >= ctx.n_ctx:
            self.end(FinishReason.CONTEXT)
        return self.state is SeqState.FINISHED

    def _count(self, before: Section) -> None:
        # a token that completes the closing marker still belongs to the thinking
        after = self.splitter.section
        in_answer = before is Section.ANSWER or (before is Section.START and after is Section.ANSWER)
        if in_answer:
            self.tokens.answer += 1
        else:
            self.tokens.thinking += 1
        if self.tokens.thinking and self.timings.think_s is None and after is Section.ANSWER:
            self.timings.think_s = time.perf_counter() - self.t_gen
        if before is Section.THINKING:
            self.thought += 1

    def _close_thinking(self, ctx: Context, *, budget: bool) -> Iterator[Event]:
        """Budget spent (or the model ended while a constrained answer is owed): close the thinking
        ourselves and let the answer follow."""
        self.budget_hit = self.budget_hit or budget
        for section, delta in self.splitter.close_thinking():
            yield TextEvent(section, delta)
        self.timings.think_s = time.perf_counter() - self.t_gen
        close = self.model.tokenize(THINK_CLOSE)
        if self.n_past + 1 + len(close) >= ctx.n_ctx:
            self.end(FinishReason.CONTEXT)
            return
        self.feed += close
        self.out += close
        self.answer_at = len(self.out)
        self._constrain()

    def flush(self) -> Iterator[Event]:
        """The end of the stream: text held back (a possible marker) goes out."""
        tail = self.decoder.decode(b"", final=True)
        for section, delta in self.splitter.feed(tail) + self.splitter.flush():
            yield TextEvent(section, delta)

    def kept_cells(self) -> tuple[list[int], tuple[int, int] | None]:
        """The tokens after the prompt that its cells hold, and the cells of the thinking among them
        (or of the prompt's empty thinking block, with thinking off), for ``ResidentPrefixes.keep_answer``."""
        held = self.out[:max(0, self.n_past - self.prep.n_prompt)]
        start = self.prep.n_prompt
        if self.prep.no_think:
            n = len(self.model.tokenize(THINK_OPEN + THINK_CLOSE))
            return held, (start - n, start)
        if self.answer_at is None or self.answer_at > len(held):
            return held, None
        return held, (start, start + self.answer_at)

    def interrupt(self) -> None:
        self.end(FinishReason.INTERRUPTED)

    def result(self) -> Result:
        self.timings.generate_s = time.perf_counter() - self.t_gen if self.t_gen else 0.0
        return Result(
            answer=self.splitter.answer, thinking=self.splitter.thinking,
            finish_reason=self.finish or FinishReason.STOP, tokens=self.tokens, timings=self.timings,
            image_tokens=self.prep.image_tokens, think_budget_hit=self.budget_hit, cached=self.cached,
        )

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None
