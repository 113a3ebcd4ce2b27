"""Option bundles shared by the commands, and what they turn into.

Values are validated by Click before any work starts (ranges, choices), so a bad option costs
milliseconds and exits 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from . import batch
from .engine.engine import EngineConfig, GenerationSettings
from .render import OutputOptions
from .tasks import DEFAULTS

F = Callable[..., Any]


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


model_options = _stack(
    click.option("--model", "-m", metavar="PATH|NAME", help="Text model: a .gguf path or an installed name "
                 "[env KVL_MODEL; default: the pulled default model]."),
    click.option("--mmproj", metavar="PATH", help="Vision projector .gguf [env KVL_MMPROJ; default: the pulled "
                 "pair's, or the one mmproj*.gguf beside --model]."),
    click.option("--ctx", type=click.IntRange(512, 1_048_576), default=16384, show_default=True,
                 help="Context window in tokens (prompt + images + thinking + answer)."),
    click.option("--threads", "-t", type=click.IntRange(1, 1024), default=None,
                 help="CPU threads [default: physical cores]."),
    click.option("--gpu-layers", type=click.IntRange(-1, 10_000), default=-1, show_default=True,
                 help="Layers to offload to the GPU (-1: all) when llama-cpp-python has a GPU backend."),
    click.option("--repack/--no-repack", default=None,
                 help="llama.cpp's repacked CPU weight layouts [default: off; it aborts on this model's graph "
                 "on some CPUs, see README; env KVL_REPACK=1]."),
    click.option("--image-min-tokens", type=click.IntRange(1, 16384), default=None,
                 help="Fewest tokens per image (libmtmd's limit; small images are scaled up)."),
    click.option("--yes", "-y", is_flag=True, help="Download the default model without asking if none is installed "
                 "[env KVL_AUTO_PULL=1]."),
    click.option("--image-max-tokens", type=click.IntRange(1, 16384), default=None,
                 help="Most tokens per image (larger images are scaled down) [caption/ask 1024, ocr 2048]."),
    click.option("--cache/--no-cache", default=True, show_default=True,
                 help="Reuse image embeddings and evaluated prompts from the disk cache (`kvl cache info`)."),
)

GPU_PARALLEL = 4  # batches on a GPU: generating several answers together costs little more than one
CPU_LANES = 2  # batches on a CPU: two workers with half the cores each beat one with all of them

batch_options = _stack(
    click.option("--from", "from_file", metavar="FILE", default=None,
                 help="Also read inputs from FILE, one per line ('-' for stdin)."),
    click.option("--skip-done", metavar="OUT.jsonl", default=None,
                 help="Skip inputs that already have a result in OUT.jsonl (from --json): resume a batch."),
    click.option("--shard", metavar="K/N", default=None, callback=batch.parse_shard,
                 help="Run only shard K of N (split by a hash of each input's name): one per machine."),
    click.option("--parallel", "-P", type=click.IntRange(1, 64), default=None,
                 help="Inputs worked on at once in a batch; each answer is printed whole, in input order. On "
                 "a GPU they share each decode; on a CPU up to one worker per core runs, each with its own share "
                 "of the cores [default: 4 with a GPU; 2 on a CPU with 2+ cores; 1 streams each answer live]."),
)

generation_options = _stack(
    click.option("--temperature", type=click.FloatRange(0, 5), default=0.8, show_default=True,
                 help="Sampling temperature (Moonshot's recommendation; 0 = greedy)."),
    click.option("--top-p", type=click.FloatRange(0, 1), default=1.0, show_default=True, help="Nucleus sampling."),
    click.option("--top-k", type=click.IntRange(0), default=0, show_default=True, help="Top-k sampling (0 = off)."),
    click.option("--seed", type=click.IntRange(0, 2**32 - 2), default=None, help="Random seed for repeatable output."),
    click.option("--max-tokens", type=click.IntRange(1), default=None,
                 help="Most tokens to generate, thinking included [caption 2048, ocr 4096, ask 8192]."),
    click.option("--think-budget", type=click.IntRange(0), default=None,
                 help="End the thinking after N tokens and let the answer follow [caption 512, ocr 256, "
                 "ask unlimited]."),
    click.option("--no-think", is_flag=True, help="Skip the thinking: answer at once (same as --think-budget 0)."),
    click.option("--show-thinking/--hide-thinking", default=None,
                 help="Show the model's thinking [default: shown on a terminal; in a pipe it goes to stderr "
                 "only when asked]."),
)

output_options = _stack(
    click.option("--json", "as_json", is_flag=True, help="One JSON object per input on stdout (JSON Lines)."),
    click.option("--verbose", "-v", count=True,
                 help="-v: phases, timings and token counts on stderr; -vv: llama.cpp's own logs too."),
    click.option("--debug", is_flag=True, help="Show the traceback of an error [env KVL_DEBUG=1]."),
)


@dataclass
class CommonArgs:
    model_opts: dict[str, Any]
    gen_opts: dict[str, Any]
    out_opts: dict[str, Any]


MODEL_KEYS = ("model", "mmproj", "ctx", "threads", "gpu_layers", "repack", "image_min_tokens", "image_max_tokens",
              "yes", "cache")
GEN_KEYS = ("temperature", "top_p", "top_k", "seed", "max_tokens", "think_budget", "no_think", "show_thinking")
OUT_KEYS = ("as_json", "verbose", "debug")


def split_kwargs(kwargs: dict[str, Any]) -> CommonArgs:
    return CommonArgs(
        {k: kwargs.pop(k) for k in MODEL_KEYS},
        {k: kwargs.pop(k) for k in GEN_KEYS},
        {k: kwargs.pop(k) for k in OUT_KEYS},
    )


def generation_settings(task: str, g: dict[str, Any]) -> GenerationSettings:
    d = DEFAULTS[task]
    budget = 0 if g["no_think"] else (g["think_budget"] if g["think_budget"] is not None else d.think_budget)
    return GenerationSettings(
        temperature=g["temperature"], top_p=g["top_p"], top_k=g["top_k"], seed=g["seed"],
        max_tokens=g["max_tokens"] or d.max_tokens, think_budget=budget,
    )


def image_max_tokens(task: str, m: dict[str, Any]) -> int:
    return int(m["image_max_tokens"] or DEFAULTS[task].image_max_tokens)


def engine_config(task: str, m: dict[str, Any], model: Any, mmproj: Any, verbose: int,
                  parallel: int = 1, lanes: int = 1) -> EngineConfig:
    repack = m["repack"]
    if repack is None:
        repack = os.environ.get("KVL_REPACK", "").lower() in ("1", "true", "yes", "on")
    return EngineConfig(
        model=model, mmproj=mmproj, n_ctx=m["ctx"], n_threads=m["threads"], n_gpu_layers=m["gpu_layers"],
        image_min_tokens=m["image_min_tokens"], image_max_tokens=image_max_tokens(task, m),
        repack=repack, verbose=verbose >= 2, parallel=parallel, lanes=lanes,
    )


def output_settings(o: dict[str, Any], g: dict[str, Any]) -> OutputOptions:
    return OutputOptions(json=o["as_json"], show_thinking=g["show_thinking"], verbose=o["verbose"] >= 1)


def uses_gpu(m: dict[str, Any]) -> bool:
    from .engine import native

    return bool(m["gpu_layers"] != 0 and native.gpu_offload_supported())


def default_parallel(m: dict[str, Any]) -> int:
    """``--parallel`` when not given: batched generation on a GPU; on a CPU, two workers."""
    if uses_gpu(m):
        return GPU_PARALLEL
    return CPU_LANES if cpu_threads(m) >= 2 else 1


def cpu_threads(m: dict[str, Any]) -> int:
    from .engine import native

    return int(m["threads"] or native.physical_cores())


def plan_parallel(m: dict[str, Any], parallel: int) -> tuple[int, int]:
    """``parallel`` inputs at once → (lanes, sequences per lane).

    A GPU runs them as sequences of one context: one decode carries a token for each. A CPU gains
    little from that (each token needs its own experts), but a lot from independent workers: one
    thread per worker has no barrier to wait at between operations, and generation, which is bound
    by memory latency, overlaps another worker's encoding. So on a CPU each lane is a worker with
    its own context and projector (about 0.7 GB more memory each) and threads / lanes threads.
    """
    if parallel <= 1 or uses_gpu(m):
        return 1, max(1, parallel)
    lanes = max(1, min(parallel, cpu_threads(m)))
    return lanes, -(-parallel // lanes)
