"""One context's batching loop: admit requests into free sequences, prefill them, decode every
running sequence together (one ``llama_decode`` carries a token for each), retire the finished,
fail the broken, end a cancelled one at its next step, and end them all on Ctrl-C with their text
kept."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator

from ..errors import EngineError, KvlError
from . import native
from .llama_handles import Batch, Context, Model
from .prefill import Prefill
from .prefix import ResidentPrefixes
from .prompt import PreparedPrompt
from .sequence import Sequence
from .types import DoneEvent, Event, FailedEvent, FinishReason, Phase, PhaseEvent, Request, Tagged


class _Cancelled(Exception):
    """A request's ``cancel`` was set while its prompt was being evaluated."""


def _tag_all(index: int, events: Iterator[Event]) -> Iterator[Tagged]:
    for ev in events:
        yield index, ev


class Scheduler:
    """Runs requests on one context, up to ``slots`` at once."""

    def __init__(self, ctx: Context, model: Model, prefill: Prefill, resident: ResidentPrefixes,
                 prepare: Callable[[Request], PreparedPrompt], before_decode: Callable[[], None]) -> None:
        self.ctx = ctx
        self.model = model
        self.prefill = prefill
        self.resident = resident
        self.prepare = prepare
        self.before_decode = before_decode
        self.im_end = model.special_token("<|im_end|>")
        self.active: list[Sequence] = []
        self.free: list[int] = []

    def run(self, source: Iterable[tuple[int, Request | None]], slots: int) -> Generator[Tagged, None, None]:
        """Yield ``(index, event)`` for every request pulled from ``source`` (lazily, one per free
        sequence, so a long batch is never all in memory; a ``None`` request: nothing to start now)."""
        slots = max(1, min(slots, self.ctx.n_seq))
        requests = iter(source)
        self.free = list(reversed(range(slots)))
        self.active = []
        batch = Batch(slots * 64)
        try:
            while True:
                exhausted = yield from self._admit(requests)
                if not self.active:
                    if exhausted:
                        return
                    continue
                if not (yield from self._decode(batch)):
                    return  # interrupted
        finally:
            batch.close()
            for seq in self.active:
                seq.close()
            self.active = []

    # -- admit ------------------------------------------------------------------------------------

    def _admit(self, requests: Iterator[tuple[int, Request | None]]) -> Generator[Tagged, None, bool]:
        """Start requests while sequences are free; returns whether ``requests`` is used up."""
        while self.free:
            nxt = next(requests, None)
            if nxt is None:
                return True
            index, request = nxt
            if request is None:
                return False  # nothing to start now: the running sequences go on
            try:
                prep = self.prepare(request)
            except KvlError as exc:
                yield index, FailedEvent(exc)
                continue
            yield from self._start(index, prep, self.free.pop())
        return False

    def _start(self, index: int, prep: PreparedPrompt, seq_id: int) -> Generator[Tagged, None, None]:
        seq = Sequence(index, seq_id, prep, self.model, self.im_end)
        try:
            try:
                n_past = yield from self._prefill(seq, prep)
            finally:
                prep.close()
        except KvlError as exc:
            self._release(seq_id)
            yield index, FailedEvent(exc)
            return
        except _Cancelled:
            self._release(seq_id)
            seq.end(FinishReason.CANCELLED)
            yield index, DoneEvent(seq.result())
            seq.close()
            return
        except KeyboardInterrupt:
            self.resident.forget(seq_id)
            yield from self._interrupt_all()
            raise
        seq.start(n_past)
        yield index, PhaseEvent(Phase.GENERATE)
        if not (yield from self._step(seq, -1)):
            return
        if seq.finish is None:
            self.active.append(seq)
        else:
            yield from self._retire(seq)

    def _prefill(self, seq: Sequence, prep: PreparedPrompt) -> Generator[Tagged, None, int]:
        """The prompt into the sequence; a cancel is looked at between its phases (images)."""
        run = self.prefill.run(prep, seq.seq_id, seq.timings, seq.cached)
        while True:
            if prep.request.cancelled:
                run.close()
                raise _Cancelled()
            try:
                ev = next(run)
            except StopIteration as stop:
                return int(stop.value or 0)
            yield seq.index, ev

    # -- decode -----------------------------------------------------------------------------------

    def _decode(self, batch: Batch) -> Generator[Tagged, None, bool]:
        """One decode for every running sequence, then a token for each. False: interrupted."""
        yield from self._cancel()
        if not self.active:
            return True
        try:
            where = self._fill(batch)
            self.before_decode()
            rc = self.ctx.decode(batch)
            if rc != 0:
                yield from self._fail_all(EngineError(f"llama.cpp failed to decode (code {rc}): {native.last_error()}"))
                return True
            for seq in self.active:
                seq.n_past += len(seq.feed)
                seq.feed = []
            for seq in list(self.active):
                ok = yield from self._step(seq, where[seq.seq_id])
                if not ok or seq.finish is not None:
                    self.active.remove(seq)
                if ok and seq.finish is not None:
                    yield from self._retire(seq)
        except KeyboardInterrupt:
            yield from self._interrupt_all()
            return False
        return True

    def _fill(self, batch: Batch) -> dict[int, int]:
        """Each sequence's pending tokens into ``batch``; where each one's logits will be."""
        batch.clear()
        where: dict[int, int] = {}
        for seq in self.active:
            for j, tok in enumerate(seq.feed):
                where[seq.seq_id] = batch.add(tok, seq.n_past + j, seq.seq_id, logits=j == len(seq.feed) - 1)
        return where

    def _step(self, seq: Sequence, logits_index: int) -> Generator[Tagged, None, bool]:
        """A token for ``seq``. A request that fails here (its answer grammar) fails alone: False."""
        try:
            yield from _tag_all(seq.index, seq.step(self.ctx, logits_index))
        except KvlError as exc:
            self._release(seq.seq_id)
            seq.close()
            yield seq.index, FailedEvent(exc)
            return False
        return True

    def _cancel(self) -> Iterator[Tagged]:
        """End every running sequence whose request was cancelled: its text kept, its cells freed."""
        for seq in [s for s in self.active if s.prep.request.cancelled]:
            self.active.remove(seq)
            seq.end(FinishReason.CANCELLED)
            yield from self._retire(seq)

    # -- retire -----------------------------------------------------------------------------------

    def _retire(self, seq: Sequence) -> Iterator[Tagged]:
        yield from _tag_all(seq.index, seq.flush())
        yield seq.index, DoneEvent(seq.result())
        seq.close()
        if seq.prep.request.keep_answer:  # a chat: the next turn repeats this answer after this prompt
            self.resident.keep_answer(seq.seq_id, seq.prep.n_prompt, *seq.kept_cells())
        else:  # keep the prompt's cells (a later request may share its start); drop the generated ones
            self.resident.keep_prompt(seq.seq_id, seq.prep.n_prompt)
        self.free.append(seq.seq_id)

    def _release(self, seq_id: int) -> None:
        self.resident.forget(seq_id)
        self.free.append(seq_id)

    def _fail_all(self, error: KvlError) -> Iterator[Tagged]:
        for seq in self.active:
            self._release(seq.seq_id)
            seq.close()
            yield seq.index, FailedEvent(error)
        self.active = []

    def _interrupt_all(self) -> Iterator[Tagged]:
        for seq in self.active:
            seq.interrupt()
            yield from _tag_all(seq.index, seq.flush())
            yield seq.index, DoneEvent(seq.result())
            seq.close()
        self.active = []
