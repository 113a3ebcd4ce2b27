"""Prefill: evaluate a prepared prompt into one sequence, reusing what the KV cells and the disk
cache already hold, encoding images on the way."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

from ..errors import ContextError
from .encoder import ImageEncoder
from .llama_handles import Context
from .mtmd_handles import Projector
from .prefix import ResidentPrefixes, SavedPrefixes
from .prompt import CacheKeys, PreparedPrompt
from .types import CacheStats, Event, Phase, PhaseEvent, Timings


@dataclass
class Prefill:
    """One worker's prompt evaluation."""

    ctx: Context
    projector: Projector
    encoder: ImageEncoder
    resident: ResidentPrefixes
    saved: SavedPrefixes | None
    keys: CacheKeys
    n_batch: int
    before_decode: Callable[[], None]  # takes the threads the worker may use now

    def run(self, prep: PreparedPrompt, seq_id: int, timings: Timings,
            cached: CacheStats) -> Generator[Event, None, int]:
        """Evaluate ``prep`` into ``seq_id``; yields phase events, returns n_past."""
        if prep.n_prompt >= self.ctx.n_ctx:
            raise ContextError(
                f"the prompt needs {prep.n_prompt} tokens ({sum(prep.image_tokens)} for images) "
                f"but the context holds {self.ctx.n_ctx}",
                hint="raise --ctx, or lower --image-max-tokens or the number of images/frames",
            )
        reuse = self.resident.reuse(prep, seq_id)
        self.resident.changing(seq_id)  # recorded again once the prompt is in
        start, skip = reuse.chunks, reuse.tokens
        n_past = cached.prefix_tokens = reuse.n_past
        images = prep.image_chunks
        boundary = images[-1] if images else None
        save_key = None
        if self.saved is not None and boundary is not None and start <= boundary:
            save_key = self.keys.prefix(prep, boundary)
            yield PhaseEvent(Phase.PREFILL, 0, len(images))
            restored = self._restore(seq_id, save_key, boundary, timings, cached)
            if restored is not None:
                start, skip, n_past = restored
        for i in range(start, prep.n_chunks):
            seg = prep.segments[i]
            if seg.image is not None:
                n_past = yield from self._image(prep, i, n_past, seq_id, timings, cached)
            else:
                if i == 0 or i == prep.n_chunks - 1:
                    yield PhaseEvent(Phase.PREFILL, sum(1 for k in images if k < i), len(images))
                n_past = self._text(prep, i, skip if i == start else 0, n_past, seq_id, timings)
            if i == boundary and save_key is not None and self.saved is not None:
                t0 = time.perf_counter()
                self.saved.save(save_key, seq_id, n_past)
                timings.cache_s += time.perf_counter() - t0
        self.resident.holds(seq_id, prep)
        return n_past

    def _restore(self, seq_id: int, key: str, boundary: int, timings: Timings,
                 cached: CacheStats) -> tuple[int, int, int] | None:
        """The prefix up to the last image from the disk cache: (next chunk, 0, n_past); None: not
        there (the sequence keeps what it holds); (0, 0, 0): there but unusable (the sequence is empty)."""
        assert self.saved is not None
        t0 = time.perf_counter()
        restored = self.saved.restore(key, seq_id)
        if restored is None:
            return None
        if restored < 0:
            cached.prefix_tokens = 0
            return 0, 0, 0
        timings.cache_s += time.perf_counter() - t0
        cached.prefix_tokens = restored
        return boundary + 1, 0, restored

    def _image(self, prep: PreparedPrompt, i: int, n_past: int, seq_id: int, timings: Timings,
               cached: CacheStats) -> Generator[Event, None, int]:
        chunk, seen = prep.segments[i].image, prep.segments[i].image_index
        assert chunk is not None
        n_images = len(prep.image_chunks)
        embd = self.encoder.lookup(chunk)
        if embd is None or not embd.from_cache:
            yield PhaseEvent(Phase.ENCODE, seen, n_images)
        if embd is None:
            embd = self.encoder.fresh(chunk, f"image {seen}")
        if embd.from_cache:
            cached.images += 1
        timings.encode_s += embd.seconds
        yield PhaseEvent(Phase.PREFILL, seen, n_images)
        t0 = time.perf_counter()
        self.before_decode()
        n_past = self.projector.decode_image(self.ctx, chunk, embd.data, n_past, seq_id, self.n_batch)
        timings.prefill_s += time.perf_counter() - t0
        return n_past

    def _text(self, prep: PreparedPrompt, i: int, skip: int, n_past: int, seq_id: int, timings: Timings) -> int:
        """Text chunk ``i`` from its token ``skip`` (those before it are in the cells already)."""
        t0 = time.perf_counter()
        self.before_decode()
        last = i == prep.n_chunks - 1
        tokens = prep.segments[i].tokens[skip:]
        n_past = self.ctx.eval_tokens(tokens, n_past, seq_id, self.n_batch, logits_last=last)
        timings.prefill_s += time.perf_counter() - t0
        return n_past
