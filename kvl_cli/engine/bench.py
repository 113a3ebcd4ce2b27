"""Measurements for ``kvl bench``: llama-bench's pp/tg on a loaded engine's first worker."""

from __future__ import annotations

import random
import time

from ..errors import EngineError
from . import native
from .engine import Engine
from .handles import Batch, Context


def _decode(ctx: Context, batch: Batch, entries: list[tuple[int, int, int]]) -> None:
    batch.clear()
    for j, (tok, pos, seq) in enumerate(entries):
        batch.add(tok, pos, seq, logits=j == len(entries) - 1)
    if ctx.decode(batch) != 0:
        raise EngineError(f"llama.cpp failed to decode: {native.last_error()}")


def bench_decode(engine: Engine, n_prompt: int, n_gen: int, parallel: int = 1, seed: int = 0) -> tuple[float, float]:
    """``n_prompt`` random tokens in batches per sequence, then, from an empty context again,
    ``n_gen`` steps of one token per sequence. Returns (prefill tok/s, generation tok/s), counting
    all ``parallel`` sequences."""
    worker = engine.workers[0]
    ctx, n_batch = worker.ctx, engine.config.n_batch
    rnd = random.Random(seed)
    n_vocab = worker.model.n_vocab
    parallel = max(1, min(parallel, ctx.n_seq))
    seqs = range(parallel)
    for s in seqs:
        worker.resident.forget(s)
    with Batch(max(n_prompt, parallel, n_batch)) as batch:
        try:
            t_pp = 0.0
            for s in seqs:
                entries = [(rnd.randrange(n_vocab), p, s) for p in range(n_prompt)]
                t0 = time.perf_counter()
                for k in range(0, n_prompt, n_batch):
                    _decode(ctx, batch, entries[k:k + n_batch])
                ctx.synchronize()
                t_pp += time.perf_counter() - t0
            for s in seqs:  # like llama-bench's tg: from an empty context
                worker.resident.forget(s)
            t0 = time.perf_counter()
            for step in range(n_gen):
                _decode(ctx, batch, [(rnd.randrange(n_vocab), step, s) for s in seqs])
            ctx.synchronize()
            t_tg = time.perf_counter() - t0
        finally:
            for s in seqs:
                worker.resident.forget(s)
    return n_prompt * parallel / t_pp, n_gen * parallel / t_tg
