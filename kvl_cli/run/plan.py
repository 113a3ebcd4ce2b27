"""One run plan: what a task, its options and the model pair become, decided once, in one place.

The commands, ``kvl serve``, the Ray workers and the library face all turn (task, options, model
pair, inputs) into the same things here: the generation settings (the task's defaults, the thinking
budget, the answer's constraint), the answer schema, how many inputs run at once and how (workers,
sequences per worker), the engine's configuration with the context each sequence needs, and the
render options. Everything a user can get wrong here is refused before a model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..engine.types import EngineConfig, GenerationSettings
from ..errors import UsageError
from ..options import CPU_LANES, GPU_PARALLEL, CommonOptions, GenerationOptions, ModelOptions
from ..render import OutputOptions
from ..schema import AnswerGate, AnswerSchema, choices_schema, load_schema
from ..tasks import DEFAULTS

MIN_IMAGE_TOKENS = 8  # below this libmtmd cannot build Kimi-VL's projector graph (it fails to load)
SCENE_THINK_BUDGET = 256  # a scene caption needs little deliberation
PROMPT_RESERVE = 512  # tokens kept for the instruction (and a video's timestamps) besides the images
STAMP_TOKENS = 16  # a video frame's timestamp and markers, besides its image tokens


@dataclass(frozen=True)
class RunPlan:
    """What a run needs, derived once from its options."""

    task: str
    model: ModelOptions
    settings: GenerationSettings
    answer: AnswerSchema | None
    render: OutputOptions
    image_tokens: int  # most tokens per image (per frame, for a video)
    parallel: int | None = None  # inputs worked on at once (None: the machine's default; see ``fit``)
    workers: int = 1  # engines on a CPU, each its own context and projector
    sequences: int = 1  # sequences per worker (a GPU's batch)
    images_per_input: int = 1  # images (frames) in the largest prompt, for the per-sequence context
    verbose: int = 0

    @property
    def frames(self) -> bool:
        """The images are video frames, each after its timestamp."""
        return self.task == "video"

    def fit(self, inputs: int | None = None, images_per_input: int | None = None) -> RunPlan:
        """The plan for a run of ``inputs`` inputs (None: not known yet, as a video's scenes) of at most
        ``images_per_input`` images: how many run at once (the asked number, else the machine's
        default; at most ``inputs``), as how many workers of how many sequences."""
        parallel = max(1, self.parallel or default_parallel(self.model))
        if inputs is not None:
            parallel = max(1, min(parallel, inputs))
        workers, sequences = split_parallel(self.model, parallel)
        return replace(self, parallel=parallel, workers=workers, sequences=sequences,
                       images_per_input=images_per_input or self.images_per_input)

    def for_ray_worker(self, threads: int, gpu: bool) -> RunPlan:
        """The plan of one Ray worker: one engine with ``threads`` threads whose sequences are the
        inputs it works on at once (``--parallel``, else a GPU's batch or one)."""
        sequences = self.parallel or (GPU_PARALLEL if gpu else 1)
        return replace(self, model=replace(self.model, threads=threads), parallel=sequences, workers=1,
                       sequences=sequences)

    def for_server(self, sequences: int | None) -> RunPlan:
        """The plan of ``kvl serve``: one engine of ``sequences`` sequences (else a GPU's batch, or two),
        each with the whole ``--ctx``: a request's length is not known until it comes."""
        sequences = sequences or (GPU_PARALLEL if uses_gpu(self.model) else 2)
        return replace(self, parallel=1, workers=1, sequences=sequences)

    def gate(self) -> AnswerGate:
        """The check a finished answer passes before it is shown (``--schema``/``--choices``)."""
        return AnswerGate(self.answer)

    def engine_config(self, model: Path, mmproj: Path) -> EngineConfig:
        m = self.model
        config = EngineConfig(model=model, mmproj=mmproj, n_ctx=m.ctx, n_threads=m.threads, n_gpu_layers=m.gpu_layers,
                              image_min_tokens=m.image_min_tokens, image_max_tokens=self.image_tokens,
                              repack=bool(m.repack), verbose=self.verbose >= 2, parallel=self.sequences,
                              lanes=self.workers)
        if (self.parallel or 1) > 1:  # each sequence gets the cells one input can use, not --ctx each
            config.n_ctx = min(config.n_ctx, sequence_ctx(self.images_per_input, self.image_tokens,
                                                          self.settings.max_tokens, frames=self.frames))
        return config


def sequence_ctx(images: int, per_image: int, max_tokens: int, *, frames: bool = False) -> int:
    """The context one input's sequence needs: its images, the longest answer and room for the
    prompt's text, rounded up to 256 cells."""
    need = images * (per_image + (STAMP_TOKENS if frames else 0)) + max_tokens + PROMPT_RESERVE
    return -(-need // 256) * 256


def make_plan(task: str, common: CommonOptions, *, parallel: int | None = None, images_per_input: int = 1,
              scenes: bool = False) -> RunPlan:
    """The plan for ``task`` ("caption", "ocr", "ask", "video"): checked now, before any input is read
    further or a model looked for. ``parallel``: inputs at once as asked (None: the machine's
    default, decided by ``fit``); ``scenes``: video captions scene by scene (a short thinking budget)."""
    m = common.model
    check_image_tokens(m, task)
    answer = answer_schema(common.gen)
    settings = generation_settings(common.gen, task, answer, scenes=scenes)
    if task == "video" and not scenes:
        parallel = 1  # one summary at a time, streamed
    render = OutputOptions(json=common.out.as_json, show_thinking=common.gen.show_thinking,
                           verbose=common.out.verbose >= 1)
    return RunPlan(task=task, model=m, settings=settings, answer=answer, render=render,
                   image_tokens=image_tokens(m, task), parallel=parallel, images_per_input=images_per_input,
                   verbose=common.out.verbose)


def image_tokens(m: ModelOptions, task: str) -> int:
    """Most tokens per image: the flag, else the task's default."""
    return int(m.image_max_tokens or DEFAULTS[task].image_max_tokens)


def check_image_tokens(m: ModelOptions, task: str) -> None:
    """--image-min-tokens / --image-max-tokens that libmtmd would refuse, refused before anything
    loads and named (measured on the toy pair, whose patch size and merge are the real projector's:
    a maximum under 8, or a minimum over the maximum, fails the projector's load)."""
    most = image_tokens(m, task)
    name = "--image-max-tokens" if m.image_max_tokens is not None else f"{task}'s image token budget"
    if most < MIN_IMAGE_TOKENS:
        raise UsageError(f"--image-max-tokens {most} is below {MIN_IMAGE_TOKENS}, the fewest tokens the vision "
                         "projector can give an image", hint=f"use --image-max-tokens {MIN_IMAGE_TOKENS} or more")
    least = m.image_min_tokens
    if least is not None and least > most:
        raise UsageError(f"--image-min-tokens {least} is more than {name} ({most})",
                         hint=f"lower --image-min-tokens to {most} or less, or raise --image-max-tokens")


def answer_schema(gen: GenerationOptions) -> AnswerSchema | None:
    """``--schema`` or ``--choices`` (checked now: a bad schema is exit 2 before anything loads)."""
    if gen.schema is not None and gen.choices is not None:
        raise UsageError("--schema and --choices do not go together", hint="give one of them")
    if gen.schema is not None:
        return load_schema(gen.schema)
    return choices_schema(gen.choices) if gen.choices is not None else None


def generation_settings(gen: GenerationOptions, task: str, answer: AnswerSchema | None = None, *,
                        scenes: bool = False) -> GenerationSettings:
    """The task's defaults under the options: thinking budget, token limit, the answer's constraint."""
    d = DEFAULTS[task]
    budget = 0 if gen.no_think else (gen.think_budget if gen.think_budget is not None else d.think_budget)
    settings = GenerationSettings(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k, seed=gen.seed,
                                  max_tokens=gen.max_tokens or d.max_tokens, think_budget=budget,
                                  constraint=answer.constraint() if answer is not None else None)
    if scenes and gen.think_budget is None and not gen.no_think:
        settings = replace(settings, think_budget=SCENE_THINK_BUDGET)
    return settings


def uses_gpu(m: ModelOptions) -> bool:
    from ..engine import native

    return bool(m.gpu_layers != 0 and native.gpu_offload_supported())


def cpu_threads(m: ModelOptions) -> int:
    from ..engine import native

    return int(m.threads or native.physical_cores())


def default_parallel(m: ModelOptions) -> int:
    """``--parallel`` when not given: batched generation on a GPU; on a CPU, two workers."""
    if uses_gpu(m):
        return GPU_PARALLEL
    return CPU_LANES if cpu_threads(m) >= 2 else 1


def split_parallel(m: ModelOptions, parallel: int) -> tuple[int, int]:
    """``parallel`` inputs at once → (workers, sequences per worker).

    A GPU runs them as sequences of one context: one decode carries a token for each. A CPU gains
    little from that (each token needs its own experts), but a lot from independent workers: one
    thread per worker has no barrier to wait at between operations, and generation, which is bound
    by memory latency, overlaps another worker's encoding. So on a CPU each worker has its own
    context and projector (about 0.7 GB more memory each) and threads / workers threads.
    """
    if parallel <= 1 or uses_gpu(m):
        return 1, max(1, parallel)
    lanes = max(1, min(parallel, cpu_threads(m)))
    return lanes, -(-parallel // lanes)
