"""Measurements for ``kvl bench``: llama-bench's pp/tg on a loaded engine's first worker."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

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


def bench_constraint(engine: Engine, n: int = 64, seed: int = 0) -> dict[str, float]:
    """What a constrained answer token costs (milliseconds), on the logits of one real decode:
    ``plain``: the sampler chain alone (a free token); ``allowed``: the token mask computed, the
    sampled token allowed and consumed (the usual case for a model answering in JSON); ``refused``:
    the mask refuses the sampled token and it is drawn again from the few allowed ones (a star rating);
    ``refused_wide``: the same inside a string, where most of the vocabulary is allowed (the refused
    logits go to -inf and the whole vocabulary is sampled again);
    ``mask``: llguidance's mask alone (median and slowest); ``tokenizer_s``: built once per model."""
    import statistics

    from .constraint import ConstrainedSampler, tokenizer_for
    from .llama_handles import Sampler
    from .types import Constraint, ConstraintKind, GenerationSettings

    worker = engine.workers[0]
    ctx, model = worker.ctx, worker.model
    worker.resident.forget(0)
    settings = GenerationSettings(temperature=0.8, seed=seed)
    with Batch(1) as batch:
        _decode(ctx, batch, [(random.Random(seed).randrange(model.n_vocab), 0, 0)])
    end = model.special_token("<|im_end|>") or model.eos
    t0 = time.perf_counter()
    tokenizer_for(model, end)
    tokenizer_s = time.perf_counter() - t0
    # anything at all (every token allowed) / a star rating (a sampled token is refused but for a few digits)
    anything = ConstrainedSampler(settings, model, Constraint(ConstraintKind.GRAMMAR, "start: /(.|\\n)*/"), end)
    stars = Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "integer", "minimum": 1, "maximum": 5}')
    refusing = ConstrainedSampler(settings, model, stars, end)
    # inside a string without an "e": most of the vocabulary allowed, so a refusal masks it all
    no_e = Constraint(ConstraintKind.JSON_SCHEMA, '{"type": "string", "pattern": "^[^e]*$"}')
    wide = ConstrainedSampler(settings, model, no_e, end)
    wide.consume(model.tokenize('"')[0])
    plain = Sampler(settings)
    logits = _logits(ctx, model.n_vocab)
    kept = logits.copy()
    try:
        t_plain = timed_runs(lambda: plain.sample(ctx, -1), n)
        t_allowed = timed_runs(lambda: _allowed(anything, ctx), n)
        t_mask = timed_runs(refusing.fill_mask, n)

        def restore() -> None:
            logits[:] = kept  # the logits as decoded (a refusal masks them in place), untimed

        def refused() -> None:
            refusing.fill_mask()
            refusing.chain.sample(ctx, -1)  # refused: drawn again from the allowed tokens
            refusing.resample(ctx, -1)

        def refused_wide() -> None:
            wide.fill_mask()
            wide.chain.sample(ctx, -1)
            wide.resample(ctx, -1)

        t_refused = timed_runs(refused, max(8, n // 2), restore)
        t_wide = timed_runs(refused_wide, max(8, n // 2), restore)
    finally:
        logits[:] = kept
        anything.close()
        refusing.close()
        wide.close()
        plain.close()
        worker.resident.forget(0)
    ms = 1e3
    return {"plain_ms": round(statistics.median(t_plain) * ms, 3),
            "allowed_ms": round(statistics.median(t_allowed) * ms, 3),
            "refused_ms": round(statistics.median(t_refused) * ms, 3),
            "refused_wide_ms": round(statistics.median(t_wide) * ms, 3),
            "mask_ms": round(statistics.median(t_mask) * ms, 4), "mask_max_ms": round(max(t_mask) * ms, 4),
            "tokenizer_s": round(tokenizer_s, 3)}


def _allowed(sampler: object, ctx: Context) -> None:
    from .constraint import ConstrainedSampler

    assert isinstance(sampler, ConstrainedSampler)
    sampler.fill_mask()
    token = sampler.chain.sample(ctx, -1)
    if sampler.allows(token):
        sampler.consume(token)


def _logits(ctx: Context, n_vocab: int) -> Any:
    """The last decode's logits, as a numpy view of llama.cpp's buffer."""
    import numpy as np

    return np.ctypeslib.as_array(native.llama().llama_get_logits_ith(ctx.ptr, -1), shape=(n_vocab,))


def timed_runs(fn: Callable[[], object], n: int, before: Callable[[], object] | None = None) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn`` (``before`` runs untimed before each)."""
    times = []
    for _ in range(n):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
