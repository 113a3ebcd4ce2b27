"""Measurements for ``kvl bench``: llama-bench's pp/tg on a loaded engine's first worker."""

from __future__ import annotations

import random
import time

from ..errors import EngineError
from . import native
from .engine import Engine
from .llama_handles import Batch, Context


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


def bench_grammar(engine: Engine, n: int = 64, seed: int = 0) -> dict[str, float]:
    """What a grammar costs per answer token (milliseconds), on the logits of one real decode:
    ``plain``: the sampler chain alone; ``accepted``: a token the grammar allows (the usual case for a
    model answering in JSON: one grammar check); ``refused``: a token the grammar refuses (all logits
    masked by the grammar and sampled again); ``utf8_table_s``: the one-time table per model."""
    from .grammar import ConstrainedSampler, Grammar
    from .llama_handles import Sampler
    from .types import GenerationSettings

    worker = engine.workers[0]
    ctx, model = worker.ctx, worker.model
    worker.resident.forget(0)
    settings = GenerationSettings(temperature=0.8, seed=seed)
    with Batch(1) as batch:
        _decode(ctx, batch, [(random.Random(seed).randrange(model.n_vocab), 0, 0)])
    t0 = time.perf_counter()
    refusing = ConstrainedSampler(settings, model, 'root ::= "\\u0001"*')  # nothing a model picks: always refused
    table_s = time.perf_counter() - t0
    plain, open_grammar = Sampler(settings), Grammar(model, "root ::= [^\\u0001]*")
    try:
        t_plain = _per_call(lambda: plain.sample(ctx, -1), n)
        t_checked = _per_call(lambda: open_grammar.allows(plain.sample(ctx, -1)), n)
        t_refused = _per_call(lambda: refusing._resample(ctx, -1, refusing.utf8.mask(b"")), max(4, n // 8))
    finally:
        refusing.close()
        plain.close()
        open_grammar.close()
        worker.resident.forget(0)
    return {"plain_ms": round(t_plain * 1e3, 3), "accepted_ms": round(t_checked * 1e3, 3),
            "refused_ms": round((t_refused + t_plain) * 1e3, 3), "utf8_table_s": round(table_s, 3)}


def _per_call(fn: object, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - t0) / n
