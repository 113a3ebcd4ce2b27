"""Option bundles shared by the commands, and what they turn into.

Values are validated by Click before any work starts (ranges, choices), so a bad option costs
milliseconds and exits 2.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from . import batch
from .engine.types import EngineConfig, GenerationSettings
from .environment import env_flag
from .errors import UsageError
from .render import OutputOptions
from .schema import AnswerSchema, choices_schema, load_schema
from .tasks import DEFAULTS

F = Callable[..., Any]


def stack_options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several Click option decorators as one (applied in the order written)."""

    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


model_options = stack_options(
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
    click.option("--server/--no-server", default=True, show_default=True,
                 help="Answer through a running `kvl serve` of the same model when there is one (images; "
                 "nothing loads here); --no-server always runs in this process."),
)

GPU_PARALLEL = 4  # batches on a GPU: generating several answers together costs little more than one
CPU_LANES = 2  # batches on a CPU: two workers with half the cores each beat one with all of them

batch_options = stack_options(
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

generation_options = stack_options(
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
    click.option("--schema", metavar="FILE|JSON", default=None,
                 help="Answer as JSON that follows this JSON Schema (a file or inline JSON): the thinking stays "
                 "free, the answer after it is constrained and validated; stdout gets the JSON document."),
    click.option("--choices", metavar="A,B,...", default=None,
                 help="Answer with exactly one of these (shorthand for an enum schema); stdout gets the choice."),
    click.option("--show-thinking/--hide-thinking", default=None,
                 help="Show the model's thinking [default: shown on a terminal; in a pipe it goes to stderr "
                 "only when asked]."),
)

output_options = stack_options(
    click.option("--json", "as_json", is_flag=True, help="One JSON object per input on stdout (JSON Lines)."),
    click.option("--verbose", "-v", count=True,
                 help="-v: phases, timings and token counts on stderr; -vv: llama.cpp's own logs too."),
    click.option("--debug", is_flag=True, help="Show the traceback of an error [env KVL_DEBUG=1]."),
    click.option("--dry-run", is_flag=True, help="Print the exact prompt each input gives the model (special "
                 "tokens as text, images as placeholders) and the settings; generate nothing."),
)


@dataclass(frozen=True)
class ModelOptions:
    model: str | None
    mmproj: str | None
    ctx: int
    threads: int | None
    gpu_layers: int
    repack: bool | None
    image_min_tokens: int | None
    image_max_tokens: int | None
    yes: bool
    cache: bool
    server: bool = True  # use a running `kvl serve` of the same model (see serve.client)

    def image_tokens(self, task: str) -> int:
        """Most tokens per image: the flag, else the task's default."""
        return int(self.image_max_tokens or DEFAULTS[task].image_max_tokens)

    @property
    def uses_gpu(self) -> bool:
        from .engine import native

        return bool(self.gpu_layers != 0 and native.gpu_offload_supported())

    @property
    def cpu_threads(self) -> int:
        from .engine import native

        return int(self.threads or native.physical_cores())

    def engine_config(self, task: str, model: Path, mmproj: Path, *, verbose: int = 0, parallel: int = 1,
                      lanes: int = 1, image_max_tokens: int | None = None) -> EngineConfig:
        return EngineConfig(
            model=model, mmproj=mmproj, n_ctx=self.ctx, n_threads=self.threads, n_gpu_layers=self.gpu_layers,
            image_min_tokens=self.image_min_tokens, image_max_tokens=image_max_tokens or self.image_tokens(task),
            repack=bool(self.repack), verbose=verbose >= 2, parallel=parallel, lanes=lanes,
        )

    def default_parallel(self) -> int:
        """``--parallel`` when not given: batched generation on a GPU; on a CPU, two workers."""
        if self.uses_gpu:
            return GPU_PARALLEL
        return CPU_LANES if self.cpu_threads >= 2 else 1

    def plan_parallel(self, parallel: int) -> tuple[int, int]:
        """``parallel`` inputs at once → (workers, sequences per worker).

        A GPU runs them as sequences of one context: one decode carries a token for each. A CPU gains
        little from that (each token needs its own experts), but a lot from independent workers: one
        thread per worker has no barrier to wait at between operations, and generation, which is bound
        by memory latency, overlaps another worker's encoding. So on a CPU each worker has its own
        context and projector (about 0.7 GB more memory each) and threads / workers threads.
        """
        if parallel <= 1 or self.uses_gpu:
            return 1, max(1, parallel)
        lanes = max(1, min(parallel, self.cpu_threads))
        return lanes, -(-parallel // lanes)


@dataclass(frozen=True)
class GenerationOptions:
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    max_tokens: int | None
    think_budget: int | None
    no_think: bool
    show_thinking: bool | None
    schema: str | None
    choices: str | None

    def answer_schema(self) -> AnswerSchema | None:
        """``--schema`` or ``--choices`` (checked now: a bad schema is exit 2 before anything loads)."""
        if self.schema is not None and self.choices is not None:
            raise UsageError("--schema and --choices do not go together", hint="give one of them")
        if self.schema is not None:
            return load_schema(self.schema)
        return choices_schema(self.choices) if self.choices is not None else None

    def settings(self, task: str, answer: AnswerSchema | None = None) -> GenerationSettings:
        d = DEFAULTS[task]
        budget = 0 if self.no_think else (self.think_budget if self.think_budget is not None else d.think_budget)
        return GenerationSettings(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed,
                                  max_tokens=self.max_tokens or d.max_tokens, think_budget=budget,
                                  grammar=answer.grammar() if answer is not None else None)


@dataclass(frozen=True)
class OutputFlags:
    as_json: bool
    verbose: int
    debug: bool
    dry_run: bool

    def render_options(self, gen: GenerationOptions) -> OutputOptions:
        return OutputOptions(json=self.as_json, show_thinking=gen.show_thinking, verbose=self.verbose >= 1)


@dataclass(frozen=True)
class BatchOptions:
    from_file: str | None
    skip_done: str | None
    shard: tuple[int, int] | None
    parallel: int | None


@dataclass(frozen=True)
class CommonOptions:
    model: ModelOptions
    gen: GenerationOptions
    out: OutputFlags


T = TypeVar("T")
# options that an environment variable sets when the flag is not given (it beats the config file)
ENV_OPTIONS = {"model": "KVL_MODEL", "mmproj": "KVL_MMPROJ", "repack": "KVL_REPACK", "yes": "KVL_AUTO_PULL",
               "debug": "KVL_DEBUG"}
FLAG_OPTIONS = {"repack", "yes", "debug"}


def take(cls: type[T], kwargs: dict[str, Any]) -> T:
    """Pop ``cls``'s fields out of Click's kwargs into a typed object, with environment variables
    applied: flag ▸ environment ▸ config file (Click's default map) ▸ built-in default."""
    values = {f.name: kwargs.pop(f.name) for f in fields(cls)}  # type: ignore[arg-type]
    ctx = click.get_current_context(silent=True)
    for name in values.keys() & ENV_OPTIONS.keys():
        given = ctx is not None and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        env = ENV_OPTIONS[name]
        if not given and os.environ.get(env):
            values[name] = env_flag(env) if name in FLAG_OPTIONS else os.environ[env]
    return cls(**values)


def common_options(kwargs: dict[str, Any]) -> CommonOptions:
    return CommonOptions(take(ModelOptions, kwargs), take(GenerationOptions, kwargs), take(OutputFlags, kwargs))
