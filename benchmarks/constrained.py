"""What a constrained answer token costs: llguidance (kvl now) against llama.cpp's GBNF grammar
sampler (kvl before #18), in one run, on the logits of one real decode of the full-size pair.

    .venv/bin/python benchmarks/constrained.py --model /work/bench-models/synthetic-Kimi-VL-A3B-Q4_K_M.gguf \\
        --mmproj /work/bench-models/mmproj-synthetic-Kimi-VL-A3B-Q8_0.gguf [--json]

The anchor is a generated token's time (one decode of one token, llama-bench's tg, measured here):
each cost is also given as a share of it. Cases, each the median of many calls on the same logits:

- ``free``: the sampler chain alone (temperature 0.8, a random seed), what an unconstrained token costs;
- ``llguidance allowed``: its mask computed, the sampled token checked and consumed;
- ``llguidance refused (few allowed)``: the mask refuses the sampled token (a star rating: only 1-5 may
  come) and it is drawn again by the chain from the allowed candidates alone;
- ``llguidance refused (most allowed)``: the same inside a string without an "e": the refused logits go
  to -inf and the whole vocabulary is sampled again;
- ``GBNF allowed``: llama.cpp's grammar sampler asked about the one sampled token (the old fast path);
- ``GBNF refused``: every logit packed and masked by the grammar sampler, then sampled again (the old
  slow path, for the same star-rating schema through llama-cpp-python's JSON-schema-to-GBNF).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STARS = {"type": "integer", "minimum": 1, "maximum": 5}


def timed(fn: Callable[[], object], n: int, before: Callable[[], object] | None = None) -> float:
    """Median seconds of ``fn`` over ``n`` calls (``before`` runs untimed before each)."""
    from kvl_cli.engine.bench import timed_runs

    return statistics.median(timed_runs(fn, n, before))


class OldGrammar:
    """kvl's constrained sampling before #18: llama.cpp's grammar sampler on GBNF."""

    def __init__(self, llama: Any, model: Any, gbnf: str) -> None:
        self.llama = llama
        self.ptr = llama.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
        if not self.ptr:
            raise SystemExit(f"llama.cpp could not parse the grammar:\n{gbnf}")
        self.n = model.n_vocab
        self.cands = (llama.llama_token_data * self.n)()

    def allows(self, token: int) -> bool:
        one = (self.llama.llama_token_data * 1)()
        one[0].id, one[0].logit, one[0].p = token, 1.0, 0.0
        arr = self.llama.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
        self.llama.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        return not math.isinf(arr.data[0].logit)

    def resample(self, ctx: Any, chain: Any) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self.llama.llama_get_logits_ith(ctx.ptr, -1), shape=(self.n,))
        data = np.empty(self.n, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
        data["id"] = np.arange(self.n, dtype=np.int32)
        data["logit"] = logits
        data["p"] = 0.0
        ctypes.memmove(self.cands, data.tobytes(), ctypes.sizeof(self.cands))
        arr = self.llama.llama_token_data_array(data=self.cands, size=self.n, selected=-1, sorted=False)
        self.llama.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        self.llama.llama_sampler_apply(chain.ptr, ctypes.byref(arr))
        return int(arr.data[arr.selected].id)

    def close(self) -> None:
        self.llama.llama_sampler_free(self.ptr)


def measure(model_path: Path, mmproj: Path, threads: int | None, n: int) -> dict[str, Any]:
    from llama_cpp import llama_grammar

    from kvl_cli.engine import native
    from kvl_cli.engine.bench import bench_constraint, bench_decode
    from kvl_cli.engine.engine import Engine
    from kvl_cli.engine.llama_handles import Batch, Sampler
    from kvl_cli.engine.types import EngineConfig, GenerationSettings

    llama = native.llama()
    t0 = time.perf_counter()
    engine = Engine(EngineConfig(model=model_path, mmproj=mmproj, n_ctx=1024, n_threads=threads,
                                 image_max_tokens=64))
    out: dict[str, Any] = {"model": model_path.name, "load_s": round(time.perf_counter() - t0, 2),
                           "threads": engine.threads}
    try:
        _, tg = bench_decode(engine, 8, 16)
        out["token_ms"] = round(1e3 / tg, 3)
        out["llguidance"] = bench_constraint(engine, n=n)
        worker = engine.workers[0]
        ctx, model = worker.ctx, worker.model
        worker.resident.forget(0)
        with Batch(1) as batch:
            batch.add(random.Random(0).randrange(model.n_vocab), 0, 0, logits=True)
            ctx.decode(batch)
        settings = GenerationSettings(temperature=0.8, seed=0)
        chain = Sampler(settings)
        gbnf = str(llama_grammar.json_schema_to_gbnf(json.dumps(STARS)))
        t0 = time.perf_counter()
        refusing = OldGrammar(llama, model, gbnf)
        parse_s = time.perf_counter() - t0
        anything = OldGrammar(llama, model, "root ::= [^\\x01]*")
        logits = __import__("numpy").ctypeslib.as_array(llama.llama_get_logits_ith(ctx.ptr, -1),
                                                        shape=(model.n_vocab,))
        kept = logits.copy()

        def restore() -> None:
            logits[:] = kept

        try:
            free = timed(lambda: chain.sample(ctx, -1), n, restore)
            allowed = timed(lambda: anything.allows(chain.sample(ctx, -1)), n, restore)

            def refused() -> None:
                if not refusing.allows(chain.sample(ctx, -1)):
                    refusing.resample(ctx, chain)

            refused_s = timed(refused, max(8, n // 4), restore)
        finally:
            restore()
            refusing.close()
            anything.close()
            chain.close()
            worker.resident.forget(0)
        out["gbnf"] = {"plain_ms": round(free * 1e3, 3), "allowed_ms": round(allowed * 1e3, 3),
                       "refused_ms": round(refused_s * 1e3, 3), "grammar_init_s": round(parse_s, 4)}
        out["matcher_ms"] = matcher_costs(model, n)
    finally:
        engine.close()
    return out


def matcher_costs(model: Any, n: int) -> dict[str, float]:
    """What each answer pays once: llguidance's matcher for its grammar (star rating; kvl locate's)."""
    from llguidance import LLMatcher

    from kvl_cli.engine.constraint import compile_constraint, tokenizer_for
    from kvl_cli.engine.types import Constraint, ConstraintKind
    from kvl_cli.run.locate import locate_grammar

    tok = tokenizer_for(model, model.special_token("<|im_end|>") or model.eos)
    out = {}
    stars = Constraint(ConstraintKind.JSON_SCHEMA, json.dumps(STARS))
    for name, c in (("stars", stars), ("locate", locate_grammar(False))):
        grammar = compile_constraint(c)
        out[name] = round(timed(lambda g=grammar: LLMatcher(tok, g, log_level=0), max(8, n // 10)) * 1e3, 3)
    return out


def table(r: dict[str, Any]) -> str:
    tok = r["token_ms"]
    g, o = r["llguidance"], r["gbnf"]

    def row(name: str, ms: float) -> str:
        return f"| {name} | {ms:.3f} ms | {ms / tok:.4f}× |"

    lines = [f"{r['model']}, {r['threads']} threads; anchor: a generated token {tok:.1f} ms",
             "", "| per answer token | cost | / generated token |", "|---|---:|---:|",
             row("free token: sampling (llguidance run)", g["plain_ms"]),
             row("free token: sampling (GBNF run)", o["plain_ms"]),
             row("llguidance, token allowed: extra", g["allowed_ms"] - g["plain_ms"]),
             row("llguidance, token refused (few allowed): extra", g["refused_ms"] - g["plain_ms"]),
             row("llguidance, token refused (most allowed): extra", g["refused_wide_ms"] - g["plain_ms"]),
             row("llguidance mask alone (median)", g["mask_ms"]),
             row("llguidance mask alone (slowest)", g["mask_max_ms"]),
             row("GBNF, token allowed: extra", o["allowed_ms"] - o["plain_ms"]),
             row("GBNF, token refused: extra", o["refused_ms"] - o["plain_ms"]),
             "", f"llguidance tokenizer, once per model: {g['tokenizer_s']:.2f} s",
             f"llguidance matcher, once per answer: {r['matcher_ms']['stars']:.2f} ms (star rating), "
             f"{r['matcher_ms']['locate']:.2f} ms (kvl locate)"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("/work/bench-models/synthetic-Kimi-VL-A3B-Q4_K_M.gguf"))
    ap.add_argument("--mmproj", type=Path, default=Path("/work/bench-models/mmproj-synthetic-Kimi-VL-A3B-Q8_0.gguf"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("-n", type=int, default=200, help="calls per case (median)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    result = measure(a.model, a.mmproj, a.threads, a.n)
    print(json.dumps(result) if a.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
